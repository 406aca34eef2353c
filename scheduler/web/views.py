"""What each page shows, as plain data: the JSON API returns it and the templates render it.

Every function takes a (read-only) session and runs a bounded number of indexed queries,
whatever the size of the catalog: lists are cut (batches: the newest 100; a batch's jobs:
one page of :data:`JOBS_PER_PAGE`; artifacts: the query's limit), read as plain rows (no
ORM objects), so each page's work does not grow with the catalog (``benchmarks/web_pages.py``;
the figures at 100,000 artifacts are in ``docs/performance.md``).
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mono_quant.catalog import (
    FINAL_STATUSES,
    Artifact,
    ArtifactQuery,
    Attempt,
    Batch,
    Job,
    JobStatus,
    artifact_record,
    artifact_records,
    get_artifact,
    job_status_counts,
)
from mono_quant.errors import BadInputError
from mono_quant.scheduler.web.timing import time_spent

__all__ = [
    "BATCHES_SHOWN",
    "COMPARE_AXES",
    "JOBS_PER_PAGE",
    "NotFound",
    "artifact_detail",
    "artifacts_page",
    "batch_detail",
    "batches_overview",
    "compare_variants",
    "json_ready",
]

#: Batches on the batches page (newest first).
BATCHES_SHOWN = 100
#: Jobs per page of a batch (the timeline shows the same jobs).
JOBS_PER_PAGE = 100
#: The quality axes the compare page plots against size (higher is better on each).
COMPARE_AXES = ("output_cosine", "weight_sqnr_db", "output_sqnr_db")


class NotFound(BadInputError):
    """The URL names a batch or an artifact that the catalog does not have (HTTP 404)."""


def json_ready(value: Any) -> Any:
    """Non-finite floats as ``{"__float__": "inf"}`` (as the CLI's ``--json``); dates ISO."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):  # str enums
        return value.value
    return value


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def batches_overview(session: Session, limit: int = BATCHES_SHOWN) -> list[dict[str, Any]]:
    """The newest batches with their jobs counted per status and the share that is final.

    Two statements of plain rows: the batches, then their jobs counted per (batch, status)
    from the ``(batch_id, status, id)`` index (index-only).
    """
    batches = session.execute(
        select(Batch.id, Batch.name, Batch.submitted_at, Batch.requested_by, Batch.labels)
        .order_by(Batch.id.desc()).limit(limit)
    ).mappings().all()
    counts = {b["id"]: {s.value: 0 for s in JobStatus} for b in batches}
    if batches:
        rows = session.execute(
            select(Job.batch_id, Job.status, func.count())
            .where(Job.batch_id.in_(list(counts)))
            .group_by(Job.batch_id, Job.status)
        )
        for batch_id, status, n in rows:
            counts[batch_id][JobStatus(status).value] = n
    out = []
    for b in batches:
        total = sum(counts[b["id"]].values())
        done = sum(counts[b["id"]][s.value] for s in FINAL_STATUSES)
        out.append({
            **b, "jobs": total, "counts": counts[b["id"]], "done": done,
            "progress": round(done / total, 4) if total else 1.0,
        })
    return out


# What the batch page shows of a job (not its config and source JSON) and of an attempt.
_JOB_COLUMNS = (
    Job.id, Job.name, Job.model_source, Job.status, Job.attempts, Job.max_attempts,
    Job.error_kind, Job.last_error, Job.worker, Job.device, Job.queue, Job.created_at,
    Job.queued_at, Job.started_at, Job.finished_at,
)
_ATTEMPT_COLUMNS = (
    Attempt.job_id, Attempt.number, Attempt.worker, Attempt.device, Attempt.started_at,
    Attempt.finished_at, Attempt.outcome, Attempt.error_kind, Attempt.error,
)


def _attempt(a: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "number": a["number"], "worker": a["worker"], "device": a["device"],
        "started_at": a["started_at"], "finished_at": a["finished_at"],
        "duration_s": _seconds(a["started_at"], a["finished_at"]),
        "outcome": a["outcome"].value if a["outcome"] else None,
        "error_kind": a["error_kind"].value if a["error_kind"] else None, "error": a["error"],
    }


def _job(j: Mapping[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": j["id"], "name": j["name"], "model_source": j["model_source"],
        "status": j["status"].value, "attempts": j["attempts"],
        "max_attempts": j["max_attempts"],
        "error_kind": j["error_kind"].value if j["error_kind"] else None,
        "last_error": j["last_error"], "worker": j["worker"], "device": j["device"],
        "queue": j["queue"], "created_at": j["created_at"], "queued_at": j["queued_at"],
        "started_at": j["started_at"], "finished_at": j["finished_at"],
        "duration_s": _seconds(j["started_at"], j["finished_at"]),
        "artifact_id": j["artifact_id"], "attempt_list": attempts,
    }


def _jobs_page(session: Session, batch_id: int, page: int) -> list[dict[str, Any]]:
    """One page of a batch's jobs with their artifact ids (one statement, in id order from
    the ``(batch_id, id)`` index) and their attempts (one more, from ``(job_id, number)``)."""
    jobs = session.execute(
        select(*_JOB_COLUMNS, Artifact.id.label("artifact_id"))
        .outerjoin(Artifact, Artifact.job_id == Job.id)
        .where(Job.batch_id == batch_id).order_by(Job.id)
        .offset((page - 1) * JOBS_PER_PAGE).limit(JOBS_PER_PAGE)
    ).mappings().all()
    attempts: dict[int, list[dict[str, Any]]] = {j["id"]: [] for j in jobs}
    if jobs:
        for a in session.execute(
            select(*_ATTEMPT_COLUMNS).where(Attempt.job_id.in_(list(attempts)))
            .order_by(Attempt.job_id, Attempt.number)
        ).mappings():
            attempts[a["job_id"]].append(_attempt(a))
    return [_job(j, attempts[j["id"]]) for j in jobs]


def batch_detail(session: Session, batch_id: int, page: int = 1) -> dict[str, Any]:
    """One batch: status counts, time spent, and one page of its jobs with their attempts.

    Plain rows throughout (no ORM objects): four statements whatever the page size.
    """
    batch = session.execute(
        select(Batch.id, Batch.name, Batch.submitted_at, Batch.requested_by, Batch.labels)
        .where(Batch.id == batch_id)
    ).mappings().one_or_none()
    if batch is None:
        raise NotFound(f"no batch with id {batch_id} in the catalog")
    counts = {s.value: n for s, n in job_status_counts(session, batch_id).items()}
    total = sum(counts.values())
    return {
        **batch, "jobs_total": total,
        "counts": counts, "page": page, "pages": max(1, -(-total // JOBS_PER_PAGE)),
        "time": time_spent(session, batch_id),
        "jobs": _jobs_page(session, batch_id, page),
    }


def _path(storage_root: str, storage_key: str) -> dict[str, str]:
    """Absolute path and file URI of an artifact (an object store's URL as both): string
    work only, the disk is not read.

    Storage keys are relative POSIX paths without ``..`` (checked when the row was written).
    """
    path = posixpath.join(storage_root, storage_key)
    return {"path": path, "uri": path if "://" in storage_root else "file://" + path}


def artifacts_page(session: Session, query: ArtifactQuery,
                   storage_root: str) -> list[dict[str, Any]]:
    """The artifacts ``query`` selects (the ``catalog list`` query), with job names and paths.

    Plain rows (:func:`~mono_quant.catalog.artifact_records`): one statement with the job's
    shown columns joined, no ORM objects, paths by string work only (:func:`_path`).
    """
    def locate(key: str) -> tuple[str, str]:
        where = _path(storage_root, key)
        return where["path"], where["uri"]

    return artifact_records(session, query, locate=locate)


def artifact_detail(session: Session, artifact_id: int, storage_root: str) -> dict[str, Any]:
    """One artifact: its record, config, metrics, per-layer weight SQNR, layers left in float."""
    try:
        artifact = get_artifact(session, artifact_id)
    except BadInputError as e:
        raise NotFound(str(e)) from e
    record = {**artifact_record(artifact, with_info=True), "job_name": artifact.job.name,
              **_path(storage_root, artifact.storage_key)}
    info = record.pop("info") or {}
    metrics = dict(info.get("metrics") or {})
    layers = metrics.pop("layer_weight_sqnr_db", None) or {}
    total, quantized = record["layers_total"], record["layers_quantized"]
    record.update({
        "config": info.get("config") or {}, "metrics": metrics,
        "selected_layers": info.get("selected_layers") or [],
        "layer_weight_sqnr_db": [{"layer": k, "sqnr_db": v} for k, v in layers.items()],
        "layers_float": None if total is None or quantized is None else total - quantized,
        "library_versions": info.get("library_versions") or {},
    })
    return record


def _variant(r: dict[str, Any]) -> str:
    group = f"/{r['group_size']}" if r.get("group_size") else ""
    return f"{r['scheme']} {r['granularity']}{group} {r['mode']} {r['format']}"


def compare_variants(session: Session, model: str, storage_root: str) -> dict[str, Any]:
    """The newest artifact of each (config, format) of one model, and per quality axis the
    points (size, value) with the smallest and the best variant marked."""
    query = ArtifactQuery(models=[model], latest=True, order_by="size_bytes",
                          descending=False, limit=None)
    rows = artifacts_page(session, query, storage_root)
    if not rows:
        raise NotFound(f"no artifacts of model {model!r} in the catalog")
    for r in rows:
        r["variant"] = _variant(r)
    axes = {}
    for axis in COMPARE_AXES:
        points = [{"id": r["id"], "size_bytes": r["size_bytes"], "value": r[axis],
                   "variant": r["variant"]}
                  for r in rows if r[axis] is not None and math.isfinite(r[axis])]
        best_size = min(points, key=lambda p: (p["size_bytes"], p["id"]), default=None)
        best_value = max(points, key=lambda p: (p["value"], -p["id"]), default=None)
        axes[axis] = {
            "points": points,
            "best_size_id": best_size and best_size["id"],
            "best_value_id": best_value and best_value["id"],
            "not_plotted": [r["id"] for r in rows if r[axis] is None or not math.isfinite(r[axis])],
        }
    for r in rows:
        r["smallest_on"] = [a for a, v in axes.items() if v["best_size_id"] == r["id"]]
        r["best_on"] = [a for a, v in axes.items() if v["best_value_id"] == r["id"]]
    return {"model": model, "variants": rows, "axes": axes}
