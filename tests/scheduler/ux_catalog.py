"""A small real catalog for the CLI tests: SQLite in ``tmp_path``, real artifact files.

Batch 1 "ux" has five jobs: two succeeded with artifacts (real safetensors files under the
storage root), one failed with bad input, one failed transiently after two attempts, one
cancelled. Batch 2 "ux" is a re-run where every job was skipped (no jobs). Batch 3 "other"
has one queued job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
from torch import nn

from mono_quant import QuantConfig, quantize_model, save_model
from mono_quant.catalog import (
    Attempt,
    AttemptOutcome,
    Batch,
    Catalog,
    ErrorKind,
    Job,
    JobStatus,
    add_artifact,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class UxCatalog:
    url: str
    root: Path
    artifact_paths: dict[int, Path]  # artifact id -> file
    source_dir: Path  # the hf: folder job 1 names (config and tokenizer files)


def _job(batch: Batch, name: str, status: JobStatus, source: str, **kw) -> Job:
    return Job(batch=batch, name=name, model_source=source, spec={}, queue="cpu",
               idempotency_key=(name * 64)[:64], status=status, **kw)


def build(tmp_path: Path) -> UxCatalog:
    root = tmp_path / "data" / "artifacts"
    url = f"sqlite:///{tmp_path / 'data' / 'catalog.db'}"
    source_dir = tmp_path / "tiny-src"
    source_dir.mkdir()
    (source_dir / "config.json").write_text('{"model_type": "llama"}')
    (source_dir / "tokenizer.json").write_text('{"version": "1.0"}')
    catalog = Catalog(url)
    catalog.upgrade()
    paths: dict[int, Path] = {}
    with catalog.begin() as session:
        ux = Batch(name="ux", submitted_at=T0)
        rerun, other = Batch(name="ux", submitted_at=T0), Batch(name="other", submitted_at=T0)
        session.add_all([ux, rerun, other])
        ok1 = _job(ux, "mlp-sym", JobStatus.SUCCEEDED, f"hf:{source_dir}")
        ok2 = _job(ux, "mlp-asym", JobStatus.SUCCEEDED, "factory:mono_quant.demo_models:mlp")
        bad = _job(ux, "broken", JobStatus.FAILED, "factory:x:y", error_kind=ErrorKind.BAD_INPUT,
                   last_error="/nonexistent: the weights file does not exist")
        flaky = _job(ux, "flaky", JobStatus.FAILED, "factory:x:z", attempts=2,
                     error_kind=ErrorKind.TRANSIENT, last_error="database is locked")
        gone = _job(ux, "gone", JobStatus.CANCELLED, "factory:x:w",
                    error_kind=ErrorKind.CANCELLED, last_error="cancelled by a user")
        queued = _job(other, "waiting", JobStatus.QUEUED, "factory:x:v")
        session.add_all([ok1, ok2, bad, flaky, gone, queued])
        session.flush()
        session.add_all([
            Attempt(job_id=flaky.id, number=1, worker="gpu0@node-a", device="cuda:0",
                    started_at=T0, finished_at=T0 + timedelta(seconds=12),
                    outcome=AttemptOutcome.FAILED, error_kind=ErrorKind.TRANSIENT,
                    error="CUDA out of memory"),
            Attempt(job_id=flaky.id, number=2, worker="gpu1@node-b", device="cuda:1",
                    started_at=T0 + timedelta(seconds=20),
                    finished_at=T0 + timedelta(seconds=20, milliseconds=2500),
                    outcome=AttemptOutcome.FAILED, error_kind=ErrorKind.TRANSIENT,
                    error="database is locked"),
        ])
        for job, scheme in ((ok1, "symmetric"), (ok2, "asymmetric")):
            model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
            qmodel, info = quantize_model(model, QuantConfig(scheme=scheme), progress=False)
            path = root / "ab" / f"key{job.id}" / f"{job.id}-1.safetensors"
            path.parent.mkdir(parents=True)
            save_model(qmodel, path, info)
            artifact = add_artifact(session, job, path, info, storage_root=root)
            paths[artifact.id] = path
    catalog.dispose()
    return UxCatalog(url, root, paths, source_dir)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
