"""Writing a submitted batch: the batch row, its jobs (``pending``), and what already exists.

Example:
    with catalog.begin() as session:
        batch, ids = create_batch(session, rows, name="nightly")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from mono_quant.catalog.models import Artifact, Batch, Job, JobStatus
from mono_quant.catalog.types import utcnow

__all__ = ["JobRow", "chunks", "create_batch", "existing_artifacts", "jobs_in_flight", "pairs"]

#: ids or keys per ``IN (...)`` list: well below SQLite's parameter limit.
CHUNK = 900


def pairs(rows: Iterable[Any]) -> dict[Any, Any]:
    """``{first column: second column}`` of two-column result rows."""
    return {row[0]: row[1] for row in rows}


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass(frozen=True)
class JobRow:
    """What ``create_batch`` needs to write one job."""

    name: str
    model_source: str
    model_source_json: dict[str, Any]
    spec: dict[str, Any]
    idempotency_key: str
    queue: str
    max_attempts: int


def create_batch(
    session: Session,
    rows: Sequence[JobRow],
    *,
    name: str,
    manifest_digest: str | None = None,
    requested_by: str | None = None,
    labels: dict[str, Any] | None = None,
) -> tuple[Batch, list[int]]:
    """Write a batch and its jobs (status ``pending``); returns the batch and the job ids."""
    batch = Batch(name=name, manifest_digest=manifest_digest, requested_by=requested_by,
                  labels=labels or {})
    session.add(batch)
    session.flush()
    now = utcnow()
    values = [
        {
            "batch_id": batch.id, "name": r.name, "model_source": r.model_source,
            "model_source_json": r.model_source_json, "spec": r.spec,
            "idempotency_key": r.idempotency_key, "queue": r.queue,
            "status": JobStatus.PENDING, "attempts": 0, "max_attempts": r.max_attempts,
            "created_at": now,
        }
        for r in rows
    ]
    ids: list[int] = []
    if values:
        ids = list(session.scalars(
            insert(Job).returning(Job.id, sort_by_parameter_order=True), values
        ))
    return batch, ids


def existing_artifacts(session: Session, keys: Iterable[str]) -> dict[str, int]:
    """Idempotency key → artifact id, for the keys that already have an artifact."""
    found: dict[str, int] = {}
    for chunk in chunks(sorted(set(keys))):
        found.update(pairs(session.execute(
            select(Artifact.idempotency_key, Artifact.id)
            .where(Artifact.idempotency_key.in_(chunk))
        )))
    return found


def jobs_in_flight(session: Session, keys: Iterable[str]) -> dict[str, int]:
    """Idempotency key → id of a job not yet final (pending, queued, running) with that key.

    A second job for the same key would race the first for the same artifact; submit skips
    such keys even with ``--force``.
    """
    found: dict[str, int] = {}
    live = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING)
    for chunk in chunks(sorted(set(keys))):
        found.update(pairs(session.execute(
            select(Job.idempotency_key, Job.id)
            .where(Job.idempotency_key.in_(chunk), Job.status.in_(live))
        )))
    return found
