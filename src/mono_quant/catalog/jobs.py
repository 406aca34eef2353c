"""The job state machine: the only code that changes ``Job.status``.

```
pending ──publish──▶ queued ──claim──▶ running ──succeed──▶ succeeded
   │                   ▲  │               │ ──fail(retry)──▶ queued (new attempt later)
   │                   │  │               │ ──fail─────────▶ failed
   └──────cancel───────┴──┴───────────────┴──cancel────────▶ cancelled
failed ──retry_jobs──▶ pending
```

Every transition is one conditional ``UPDATE … WHERE status IN (…)`` so two workers, a worker
and a user, or a worker and ``reconcile`` can race without corrupting a job: the loser's
UPDATE matches no row. ``claim`` is the heart of it:

* a job is claimable when it is ``pending``/``queued``, or ``running`` but presumed dead — its
  heartbeat is older than ``stale_before``, or it is held by *this same node* (a node runs one
  job at a time, so if it is asking again its previous process died);
* each claim counts an attempt; a claim past ``max_attempts`` means the earlier attempts
  crashed their worker instead of finishing, so the job is failed as ``poison`` and never runs
  again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from mono_quant.catalog.artifacts import add_artifact, artifact_for_key
from mono_quant.catalog.models import (
    Artifact,
    Attempt,
    AttemptOutcome,
    Batch,
    ErrorKind,
    Job,
    JobStatus,
)
from mono_quant.catalog.types import utcnow
from mono_quant.errors import BadInputError
from mono_quant.io.info import QuantizationInfo

__all__ = [
    "Claim",
    "JobRow",
    "cancel_jobs",
    "claim",
    "create_batch",
    "existing_artifacts",
    "fail",
    "heartbeat",
    "mark_queued",
    "reconcile_candidates",
    "release",
    "retry_jobs",
    "stale_cutoff",
    "succeed",
]

S = JobStatus
_CHUNK = 900  # ids per IN (...) list: below SQLite's parameter limit


@dataclass(frozen=True)
class JobRow:
    """What ``create_batch`` needs to write one job."""

    name: str
    model_source: str
    model_source_json: dict[str, Any]
    config: dict[str, Any]
    idempotency_key: str
    queue: str
    max_attempts: int


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


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
            "model_source_json": r.model_source_json, "config": r.config,
            "idempotency_key": r.idempotency_key, "queue": r.queue, "status": S.PENDING,
            "attempts": 0, "max_attempts": r.max_attempts, "created_at": now,
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
    keys = list(set(keys))
    found: dict[str, int] = {}
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        for key, aid in session.execute(
            select(Artifact.idempotency_key, Artifact.id)
            .where(Artifact.idempotency_key.in_(chunk))
        ):
            found[key] = aid
    return found


def mark_queued(session: Session, job_ids: Sequence[int]) -> int:
    """``pending → queued`` after their messages were published; returns how many moved."""
    moved = 0
    now = utcnow()
    for chunk in _chunks(list(job_ids)):
        moved += session.execute(
            update(Job).where(Job.id.in_(chunk), Job.status == S.PENDING)
            .values(status=S.QUEUED, queued_at=now)
        ).rowcount
    return moved


@dataclass(frozen=True)
class Claim:
    """The result of :func:`claim`: ``job`` is set when this worker now runs it."""

    job: Job | None
    status: JobStatus | None  # the job's status when not claimed (None: no such job)
    attempt: int = 0

    @property
    def claimed(self) -> bool:
        return self.job is not None


def claim(
    session: Session, job_id: int, *, worker: str, device: str, stale_before: datetime,
    task_id: str | None = None,
) -> Claim:
    """Atomically take ``job_id`` for ``worker`` (see the module docstring)."""
    now = utcnow()
    claimable = or_(
        Job.status.in_([S.PENDING, S.QUEUED]),
        and_(
            Job.status == S.RUNNING,
            or_(Job.worker == worker, Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),
        ),
    )
    taken = session.execute(
        update(Job).where(Job.id == job_id, claimable).values(
            status=S.RUNNING, attempts=Job.attempts + 1, worker=worker, device=device,
            heartbeat_at=now, started_at=now, progress=None, celery_task_id=task_id,
        )
    ).rowcount
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return Claim(None, None)
    if not taken:
        return Claim(None, job.status)
    # Earlier attempts that never finished died with their worker.
    session.execute(
        update(Attempt).where(Attempt.job_id == job_id, Attempt.outcome.is_(None)).values(
            outcome=AttemptOutcome.LOST, finished_at=now, error_kind=ErrorKind.INTERNAL,
            error="the worker died while running this attempt",
        )
    )
    if job.attempts > job.max_attempts:
        crashed = session.scalar(
            select(func.count()).select_from(Attempt)
            .where(Attempt.job_id == job_id, Attempt.outcome == AttemptOutcome.LOST)
        )
        _finish(job, S.FAILED, ErrorKind.POISON,
                f"poison: {crashed} of {job.max_attempts} attempt(s) died with their worker "
                "(crash, OOM kill or time limit); not running it again", now)
        job.attempts -= 1  # this claim did not start an attempt
        return Claim(None, job.status)
    number = (session.scalar(select(func.max(Attempt.number)).where(Attempt.job_id == job_id))
              or 0) + 1
    session.add(Attempt(job_id=job_id, number=number, worker=worker, device=device,
                        started_at=now))
    return Claim(job, S.RUNNING, job.attempts)


def _finish(job: Job, status: JobStatus, kind: ErrorKind | None, error: str | None, now) -> None:
    job.status = status
    job.error_kind = kind
    job.last_error = error
    job.finished_at = now
    job.progress = None


def _owned(session: Session, job_id: int, worker: str) -> Job | None:
    job = session.get(Job, job_id, populate_existing=True, with_for_update=True)
    if job is None or job.status != S.RUNNING or job.worker != worker:
        return None
    return job


def _close_attempt(session: Session, job_id: int, outcome: AttemptOutcome,
                   kind: ErrorKind | None = None, error: str | None = None) -> None:
    session.execute(
        update(Attempt).where(Attempt.job_id == job_id, Attempt.outcome.is_(None)).values(
            outcome=outcome, finished_at=utcnow(), error_kind=kind, error=error,
        )
    )


def heartbeat(session: Session, job_id: int, worker: str,
              progress: dict[str, Any] | None = None) -> bool:
    """Refresh the heartbeat (and progress); False when the job is no longer ours to run
    (cancelled, or reclaimed after we were presumed dead)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    return bool(session.execute(
        update(Job).where(Job.id == job_id, Job.status == S.RUNNING, Job.worker == worker)
        .values(**values)
    ).rowcount)


def succeed(
    session: Session, job_id: int, worker: str, *, storage_root, storage_key: str, fmt: str,
    sha256: str, size_bytes: int, info: QuantizationInfo, model_digest: str | None = None,
) -> Artifact | None:
    """Record the artifact and mark the job succeeded, in the caller's transaction.

    Returns None (and changes nothing) when the job is no longer ours. A forced re-run of an
    idempotency key that already has an artifact takes that artifact over: the file at its
    deterministic key was just rewritten.
    """
    job = _owned(session, job_id, worker)
    if job is None:
        return None
    previous = artifact_for_key(session, job.idempotency_key)
    if previous is not None and previous.job_id != job.id:
        session.delete(previous)
        session.flush()
    artifact = add_artifact(
        session, job, storage_key, info, storage_root=storage_root, format=fmt, sha256=sha256,
        size_bytes=size_bytes, model_digest=model_digest,
    )
    _finish(job, S.SUCCEEDED, None, None, utcnow())
    _close_attempt(session, job_id, AttemptOutcome.SUCCEEDED)
    return artifact


def fail(session: Session, job_id: int, worker: str, kind: ErrorKind, error: str, *,
         retry: bool = False) -> JobStatus | None:
    """Record a failed attempt. With ``retry`` and attempts left, the job goes back to
    ``queued`` (the caller re-sends its message); otherwise it is ``failed``. Returns the new
    status, or None when the job is no longer ours."""
    job = _owned(session, job_id, worker)
    if job is None:
        return None
    _close_attempt(session, job_id, AttemptOutcome.FAILED, kind, error)
    if retry and job.attempts < job.max_attempts:
        job.status, job.error_kind, job.last_error = S.QUEUED, kind, error
        job.queued_at, job.progress = utcnow(), None
        return S.QUEUED
    if retry:
        error = f"{error} (gave up after {job.attempts} attempts)"
    _finish(job, S.FAILED, kind, error, utcnow())
    return S.FAILED


def release(session: Session, worker: str) -> list[int]:
    """A worker shutting down hands its running jobs back: ``running → queued``.

    The interrupted attempt is closed as lost but does not count toward ``max_attempts``: an
    operator stopping a worker is not the job's fault. Returns the released job ids (their
    messages go back to the broker with the worker's unacknowledged ones).
    """
    jobs = list(session.scalars(
        select(Job).where(Job.status == S.RUNNING, Job.worker == worker).with_for_update()
    ))
    now = utcnow()
    for job in jobs:
        _close_attempt(session, job.id, AttemptOutcome.LOST, ErrorKind.INTERNAL,
                       "interrupted: the worker shut down")
        job.status, job.worker, job.queued_at, job.progress = S.QUEUED, None, now, None
        job.attempts = max(0, job.attempts - 1)
    return [job.id for job in jobs]


def cancel_jobs(session: Session, *, batch_id: int | None = None,
                job_ids: Sequence[int] | None = None) -> list[Job]:
    """Cancel every non-final job of a batch or of ``job_ids``; returns the cancelled jobs
    (those that were ``running`` still have a process to revoke: ``celery_task_id``)."""
    if (batch_id is None) == (job_ids is None):
        raise BadInputError("cancel: give a batch or job ids, not both")
    cond = Job.batch_id == batch_id if batch_id is not None else Job.id.in_(list(job_ids or []))
    jobs = list(session.scalars(
        select(Job).where(cond, Job.status.in_([S.PENDING, S.QUEUED, S.RUNNING]))
        .with_for_update()
    ))
    now = utcnow()
    for job in jobs:
        was_running = job.status == S.RUNNING
        _finish(job, S.CANCELLED, ErrorKind.CANCELLED, "cancelled by a user", now)
        if was_running:
            _close_attempt(session, job.id, AttemptOutcome.CANCELLED, ErrorKind.CANCELLED,
                           "cancelled by a user")
    return jobs


def retry_jobs(session: Session, *, batch_id: int | None = None,
               job_ids: Sequence[int] | None = None, all_failed: bool = False) -> list[Job]:
    """``failed → pending`` with a fresh attempt budget; returns the jobs to publish.

    ``attempts`` counts attempts since the last retry; the attempts table keeps them all.
    """
    if sum(x is not None and x is not False for x in (batch_id, job_ids, all_failed)) != 1:
        raise BadInputError("retry: give exactly one of a batch, job ids or all failed jobs")
    cond = [Job.status == S.FAILED]
    if batch_id is not None:
        cond.append(Job.batch_id == batch_id)
    elif job_ids is not None:
        cond.append(Job.id.in_(list(job_ids)))
    jobs = list(session.scalars(select(Job).where(*cond).with_for_update()))
    for job in jobs:
        job.status, job.attempts, job.finished_at = S.PENDING, 0, None
    return jobs


def reconcile_candidates(
    session: Session, *, stale_before: datetime, pending_before: datetime,
    queued_before: datetime, on_broker: set[int] | None = None,
) -> list[Job]:
    """Jobs whose message is presumably lost; they are set ``queued`` and returned to publish.

    * ``pending`` since before ``pending_before`` (publishing failed after the commit);
    * ``queued`` since before ``queued_before`` and not found on the broker (``on_broker`` is
      the set of job ids in the broker's queues, when the broker can be inspected; duplicates
      are harmless anyway: a second delivery cannot claim a running or finished job);
    * ``running`` with a heartbeat older than ``stale_before`` (the worker died unacked).
    """
    candidates = list(session.scalars(select(Job).where(or_(
        and_(Job.status == S.PENDING, Job.created_at < pending_before),
        and_(Job.status == S.QUEUED, Job.queued_at < queued_before),
        and_(Job.status == S.RUNNING,
             or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before)),
    )).with_for_update()))
    out = []
    now = utcnow()
    for job in candidates:
        if job.status == S.QUEUED and on_broker is not None and job.id in on_broker:
            continue
        if job.status == S.RUNNING:
            _close_attempt(session, job.id, AttemptOutcome.LOST, ErrorKind.INTERNAL,
                           "heartbeat went stale: the worker died or lost its connection")
        job.status, job.queued_at, job.worker = S.QUEUED, now, None
        out.append(job)
    return out


def stale_cutoff(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)
