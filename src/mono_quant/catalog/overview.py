"""Batches and jobs at a glance: the queries behind ``mono-quant batches`` and ``jobs show``
and the rows of ``jobs`` (plain dicts, JSON-ready, so any front end can print them); pages of
jobs come from :func:`mono_quant.catalog.job_list.list_jobs`.

Example:
    with catalog.begin() as session:
        for b in list_batches(session, limit=20):
            print(b["id"], b["name"], b["counts"])
        detail = job_detail(session, 17)       # with its attempts and their durations
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mono_quant.catalog.models import Artifact, Attempt, Batch, Job
from mono_quant.errors import BadInputError

__all__ = ["duration_s", "job_detail", "job_row", "list_batches"]


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def duration_s(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds between two times, or None while one of them is missing."""
    return None if start is None or end is None else (end - start).total_seconds()


def list_batches(session: Session, *, limit: int | None = 50, offset: int = 0
                 ) -> list[dict[str, Any]]:
    """Batches newest first, each with its job counts per status and its artifact count."""
    batches = list(session.scalars(
        select(Batch).order_by(Batch.id.desc()).offset(offset).limit(limit)
    ))
    ids = [b.id for b in batches]
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    for batch_id, status, n in session.execute(
        select(Job.batch_id, Job.status, func.count()).where(Job.batch_id.in_(ids))
        .group_by(Job.batch_id, Job.status)
    ):
        counts[batch_id][status.value] = n
    artifacts = dict(session.execute(
        select(Job.batch_id, func.count()).join(Artifact, Artifact.job_id == Job.id)
        .where(Job.batch_id.in_(ids)).group_by(Job.batch_id)
    ).all())
    return [
        {"id": b.id, "name": b.name, "submitted_at": _iso(b.submitted_at),
         "requested_by": b.requested_by, "labels": b.labels, "jobs": sum(counts[b.id].values()),
         "counts": counts[b.id], "artifacts": artifacts.get(b.id, 0)}
        for b in batches
    ]


def job_row(job: Job) -> dict[str, Any]:
    """A job as a flat dict (its spec and source JSON are not read: list pages defer them)."""
    return {
        "id": job.id, "batch_id": job.batch_id, "name": job.name,
        "model_source": job.model_source, "state": job.status.value, "queue": job.queue,
        "attempts": job.attempts, "max_attempts": job.max_attempts, "worker": job.worker,
        "device": job.device, "error_kind": job.error_kind.value if job.error_kind else None,
        "error": job.last_error, "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
        "duration_s": duration_s(job.started_at, job.finished_at),
    }


def job_detail(session: Session, job_id: int) -> dict[str, Any]:
    """One job with its attempts (start, end, duration, node, device, outcome, error)."""
    job = session.get(Job, job_id)
    if job is None:
        raise BadInputError(f"no job with id {job_id} in the catalog; `mono-quant jobs` lists them")
    row = job_row(job)
    row["batch_name"] = job.batch.name
    row["artifact_id"] = job.artifact.id if job.artifact else None
    row["attempt_rows"] = [
        {"number": a.number, "worker": a.worker, "device": a.device,
         "started_at": _iso(a.started_at), "finished_at": _iso(a.finished_at),
         "duration_s": duration_s(a.started_at, a.finished_at),
         "outcome": a.outcome.value if a.outcome else None,
         "error_kind": a.error_kind.value if a.error_kind else None, "error": a.error}
        for a in session.scalars(
            select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number))
    ]
    return row
