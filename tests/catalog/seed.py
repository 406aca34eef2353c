"""A seeded catalog and a pure-Python reference for its queries.

``seed(session)`` writes batches, jobs and artifacts (through ``add_artifact``, with the
sha256 and size given so no files are needed) and returns what each artifact row must hold,
as plain dicts. ``reference(records, query)`` answers an ArtifactQuery with list operations
only, so the SQL can be checked against it.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
from datetime import datetime, timedelta, timezone
from typing import Any

from mono_quant import QuantConfig, QuantizationInfo
from mono_quant.catalog import ArtifactQuery, Batch, Catalog, Job, JobStatus, add_artifact
from mono_quant.io.serveability import check_scheme
from tests.catalog.backends import sqlite_path, sqlite_snapshot

MODELS = [f"hf:org/model-{i}@main" for i in range(5)] + ["file:models/mlp.pt"]
BATCHES = ["nightly", "weekly", "adhoc"]
FORMATS = ["safetensors", "pt", "compressed-tensors"]
SUFFIX = {"safetensors": ".safetensors", "pt": ".pt", "compressed-tensors": ""}
CONFIGS = [
    QuantConfig(scheme=s, granularity=g, mode=m, group_size=32 if g == "per_group" else None)
    for s in ("symmetric", "asymmetric")
    for g in ("per_tensor", "per_channel", "per_group")
    for m in ("weight_only", "static")
]
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
N = 72


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


#: Seeded SQLite catalogs of this process by ``n``: the file's bytes and the records.
_SEEDED: dict[int, tuple[bytes, list[dict[str, Any]]]] = {}


def seeded_catalog(url: str, n: int = N) -> tuple[Catalog, list[dict[str, Any]]]:
    """A catalog at ``url`` (upgraded, empty) holding :func:`seed`'s rows, and their records.

    On SQLite the seeded file is made once per process and copied for the next tests (seeding
    took ~2 s a test on the shared machine); the records are deep copies, so a test that
    changes its own cannot change another's."""
    path = sqlite_path(url)
    if path is not None and n in _SEEDED:
        data, records = _SEEDED[n]
        path.write_bytes(data)
        return Catalog(url), copy.deepcopy(records)
    catalog = Catalog(url)
    with catalog.begin() as session:
        records = seed(session, n)
    if path is not None:
        catalog.dispose()  # every connection closed: the file holds all of it
        data = sqlite_snapshot(path)
        if data is not None:
            _SEEDED[n] = (data, copy.deepcopy(records))
    return catalog, records


def seed(session, n: int = N, rng_seed: int = 20240501) -> list[dict[str, Any]]:
    rng = random.Random(rng_seed)
    batches = [Batch(name=name, labels={"team": "search"}) for name in BATCHES]
    session.add_all(batches)
    session.flush()
    records = []
    for i in range(n):
        model = rng.choice(MODELS)
        # configs repeat per model so --latest has groups with several members
        config = CONFIGS[rng.randrange(4)] if i % 3 else rng.choice(CONFIGS)
        fmt = FORMATS[i % 3]
        batch = batches[i % len(batches)]
        status = JobStatus.SUCCEEDED if i % 7 else rng.choice(
            [JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.RUNNING])
        key = _digest(f"job-{i}")
        job = Job(batch=batch, name=f"job-{i}", model_source=model, spec=config.to_dict(),
                  idempotency_key=key, queue="cpu", status=status)
        session.add(job)

        sqnr = math.inf if i % 13 == 0 else round(rng.uniform(20.0, 60.0), 3)
        sqnr_min = math.inf if i % 13 == 0 else round(sqnr - rng.uniform(0.0, 10.0), 3)
        metrics: dict[str, Any] = {
            "weight_sqnr_db": sqnr, "weight_sqnr_db_min": sqnr_min,
            "layer_weight_sqnr_db": {"fc1": sqnr, "fc2": sqnr_min},
            "layers_quantized": 2 + i % 3, "layers_total": 3 + i % 3,
            "size_bytes_fp": 4000 * (i + 1), "size_bytes_quant": 1000 * (i + 1) + 64,
            "compression_ratio": round(4000 * (i + 1) / (1000 * (i + 1) + 64), 4),
        }
        metrics.update(check_scheme(config, fmt).metrics())
        if i % 5 == 0:
            metrics["warnings"] = ["low compression: 1.20x (< 1.5x); ..."]
        if config.mode == "static" or i % 4 == 0:
            metrics["output_cosine"] = math.nan if i == 10 else round(rng.uniform(0.95, 1), 5)
            metrics["output_sqnr_db"] = round(rng.uniform(15.0, 45.0), 3)
            metrics["eval_batches"] = 2
        info = QuantizationInfo(
            config, selected_layers=["fc1", "fc2"], calibration_samples=8 * (i % 5),
            library_versions={"torch": "2.13.0", "mono-quant": "0.1.0",
                              "safetensors": "0.5.3", "python": "3.11.7"},
            metrics=metrics,
        )
        # a few artifacts share a timestamp so the id tie-break is exercised
        created = T0 + timedelta(hours=rng.randrange(0, 24 * 30) if i % 9 else 5)
        size = rng.randrange(1_000, 100_000_000)
        sha = _digest(f"artifact-{i}")
        model_digest = _digest(model) if MODELS.index(model) % 2 == 0 else None
        artifact = add_artifact(
            session, job, f"{model.split(':')[1]}/{key[:16]}{SUFFIX[fmt]}", info,
            storage_root="/nonexistent-root", format=fmt, sha256=sha, size_bytes=size,
            model_digest=model_digest, created_at=created,
        )
        cosine = metrics.get("output_cosine")
        records.append({
            "id": artifact.id, "model_source": model, "model_digest": model_digest,
            "config": config, "scheme": config.scheme, "granularity": config.granularity,
            "group_size": config.group_size, "mode": config.mode, "format": fmt,
            "dtype": "int8", "batch_id": batch.id, "batch_name": batch.name,
            "job_status": status.value, "weight_sqnr_db": sqnr, "weight_sqnr_db_min": sqnr_min,
            "output_cosine": None if cosine is None or math.isnan(cosine) else cosine,
            "output_sqnr_db": metrics.get("output_sqnr_db"), "size_bytes": size,
            "compression_ratio": metrics["compression_ratio"], "created_at": created,
            "sha256": sha, "info": info, "serveable_by": metrics["serveable_by"],
            "low_compression": i % 5 == 0,
        })
    session.flush()
    return records


def _matches(r: dict[str, Any], q: ArtifactQuery) -> bool:
    def one_of(value: Any, allowed: tuple) -> bool:
        return not allowed or value in allowed

    batches_ok = not q.batches or any(
        r["batch_id"] == int(b) if isinstance(b, int) or b.isdigit() else r["batch_name"] == b
        for b in q.batches
    )
    return (
        one_of(r["model_source"], q.models) and one_of(r["model_digest"], q.model_digests)
        and one_of(r["scheme"], q.schemes) and one_of(r["granularity"], q.granularities)
        and one_of(r["mode"], q.modes) and one_of(r["format"], q.formats)
        and one_of(r["dtype"], q.dtypes) and one_of(r["job_status"], q.statuses)
        and batches_ok
        and one_of(r["serveable_by"], q.serveable_by)
        and (q.min_sqnr is None or r["weight_sqnr_db"] >= q.min_sqnr)
        and (q.min_cosine is None or (r["output_cosine"] is not None
                                      and r["output_cosine"] >= q.min_cosine))
        and (q.max_size is None or r["size_bytes"] <= q.max_size)
        and (q.since is None or r["created_at"] >= q.since)
    )


def reference(records: list[dict[str, Any]], q: ArtifactQuery) -> list[int]:
    """The ids ``list_artifacts`` must return, computed in Python."""
    rows = [r for r in records if _matches(r, q)]
    if q.latest:
        newest: dict[tuple, dict[str, Any]] = {}
        for r in rows:
            group = (r["model_source"], r["config"], r["format"])
            if group not in newest or (r["created_at"], r["id"]) > (
                newest[group]["created_at"], newest[group]["id"]
            ):
                newest[group] = r
        rows = list(newest.values())
    present = [r for r in rows if r[q.order_by] is not None]
    missing = [r for r in rows if r[q.order_by] is None]  # NULLs last either way
    present.sort(key=lambda r: (r[q.order_by], r["id"]), reverse=q.descending)
    missing.sort(key=lambda r: r["id"], reverse=q.descending)
    ids = [r["id"] for r in present + missing]
    return ids if q.limit is None else ids[: q.limit]
