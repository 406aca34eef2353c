"""The job state machine: the only code that changes ``Job.status``.

```
pending ──publish──▶ queued ──claim──▶ running ──succeed──▶ succeeded
   │    ◀──unsend───   ▲  │               │ ──fail(retry)──▶ queued (new attempt later)
   │                   │  │               │ ──fail─────────▶ failed
   │                   │  │               │ ──release / requeue_lost / reconcile──▶ queued
   └──────cancel───────┴──┴───────────────┴──cancel────────▶ cancelled
failed ──retry_jobs──▶ pending
```

A submit that publishes writes its new jobs ``queued`` directly (one write per row, not an
insert and then an update of every row), commits, then sends their messages; the jobs whose
messages could not be sent go back to ``pending`` (:func:`unsend`). If the process dies
between the commit and the send, the jobs are ``queued`` without a message, which
``reconcile`` finds by scanning the broker and re-publishes.

Every transition is one conditional ``UPDATE … WHERE status … [AND worker = me]`` whose row
count (or ``RETURNING``) says whether it happened, so two workers, a worker and a user, or a
worker and ``reconcile`` can race without corrupting a job: the loser's UPDATE matches no row.
(A read followed by a write would not do: SQLite ignores ``SELECT … FOR UPDATE``.) The first
UPDATE of a transaction also takes SQLite's write lock, so what follows it in the same
transaction is serialized with every other writer.

``claim`` is the heart of it:

* a job is claimable when it is ``pending``/``queued``, or ``running`` but presumed dead — its
  heartbeat is older than ``stale_before``, or it is held by *this same node* (a node runs one
  job at a time, so if it is asking again its previous process died);
* each claim counts an attempt; a claim past ``max_attempts`` means the earlier attempts
  died with their worker instead of finishing, so the job is failed as ``poison``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from mono_quant.catalog import latest
from mono_quant.catalog.artifacts import add_artifact, artifact_for_key
from mono_quant.catalog.batches import chunks, id_filters, pairs
from mono_quant.catalog.models import (
    Artifact,
    Attempt,
    AttemptOutcome,
    ErrorKind,
    Job,
    JobStatus,
)
from mono_quant.catalog.types import utcnow
from mono_quant.errors import BadInputError
from mono_quant.quant.info import QuantizationInfo

__all__ = [
    "Claim",
    "cancel_jobs",
    "claim",
    "fail",
    "heartbeat",
    "mark_queued",
    "reconcile_jobs",
    "release",
    "requeue_lost",
    "retry_jobs",
    "stale_cutoff",
    "succeed",
    "unsend",
]

S = JobStatus
_LIVE = (S.PENDING, S.QUEUED, S.RUNNING)


def stale_cutoff(seconds: float) -> datetime:
    """Heartbeats older than this are stale."""
    return utcnow() - timedelta(seconds=seconds)


def _ours(job_id: int, worker: str):
    return (Job.id == job_id, Job.status == S.RUNNING, Job.worker == worker)


def _close_attempts(session: Session, job_ids: Sequence[int], outcome: AttemptOutcome,
                    kind: ErrorKind | None = None, error: str | None = None) -> set[int]:
    """Close the open attempt of each job; returns the jobs that had one (were running)."""
    closed: set[int] = set()
    for chunk in chunks(list(job_ids)):
        closed.update(session.scalars(
            update(Attempt).where(Attempt.job_id.in_(chunk), Attempt.outcome.is_(None))
            .values(outcome=outcome, finished_at=utcnow(), error_kind=kind, error=error)
            .returning(Attempt.job_id)
        ))
    return closed


def mark_queued(session: Session, job_ids: Sequence[int]) -> int:
    """``pending → queued`` after their messages were published; returns how many moved."""
    moved = 0
    now = utcnow()
    for ids in id_filters(Job.id, job_ids):
        moved += session.execute(
            update(Job).where(ids, Job.status == S.PENDING)
            .values(status=S.QUEUED, queued_at=now)
        ).rowcount
    return moved


def unsend(session: Session, job_ids: Sequence[int]) -> int:
    """``queued → pending`` for jobs written ``queued`` whose message was never sent (a
    submit's publish failed): ``reconcile`` publishes ``pending`` jobs. Only jobs not yet
    claimed (no attempt) move; returns how many did."""
    moved = 0
    for ids in id_filters(Job.id, job_ids):
        moved += session.execute(
            update(Job).where(ids, Job.status == S.QUEUED, Job.attempts == 0)
            .values(status=S.PENDING, queued_at=None)
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
    _close_attempts(session, [job_id], AttemptOutcome.LOST, ErrorKind.INTERNAL,
                    "the worker died while running this attempt")
    if job.attempts > job.max_attempts:
        crashed = session.scalar(
            select(func.count()).select_from(Attempt)
            .where(Attempt.job_id == job_id, Attempt.outcome == AttemptOutcome.LOST)
        )
        session.execute(update(Job).where(*_ours(job_id, worker)).values(
            status=S.FAILED, error_kind=ErrorKind.POISON, finished_at=now, progress=None,
            attempts=Job.attempts - 1,  # this claim did not start an attempt
            last_error=f"poison: {crashed} of {job.max_attempts} attempt(s) died with their "
                       "worker (crash, OOM kill or time limit); not running it again",
        ))
        session.refresh(job)
        return Claim(None, job.status)
    number = (session.scalar(select(func.max(Attempt.number)).where(Attempt.job_id == job_id))
              or 0) + 1
    session.add(Attempt(job_id=job_id, number=number, worker=worker, device=device,
                        started_at=now))
    return Claim(job, S.RUNNING, job.attempts)


def heartbeat(session: Session, job_id: int, worker: str,
              progress: dict[str, Any] | None = None) -> bool:
    """Refresh the heartbeat (and progress); False when the job is no longer ours to run
    (cancelled, or reclaimed after we were presumed dead)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    return bool(session.execute(update(Job).where(*_ours(job_id, worker)).values(**values))
                .rowcount)


def succeed(
    session: Session, job_id: int, worker: str, *, storage_root, storage_key: str, fmt: str,
    sha256: str, size_bytes: int, info: QuantizationInfo, model_digest: str | None = None,
    model_source: str | None = None,
) -> tuple[Artifact, str | None] | None:
    """Mark the job succeeded and record its artifact, in the caller's transaction.

    ``model_source``: what ran, derived by the worker from the payload it validated (the
    job's own column is only a fallback for callers that have nothing better).

    Returns ``(artifact, replaced storage key or None)``, or None (and changes nothing) when
    the job is no longer ours. A forced re-run of an idempotency key that already has an
    artifact takes the key over; the caller deletes the replaced file after the commit.
    """
    taken = session.execute(update(Job).where(*_ours(job_id, worker)).values(
        status=S.SUCCEEDED, error_kind=None, last_error=None, finished_at=utcnow(),
        progress=None,
    )).rowcount
    if not taken:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    replaced = None
    previous = artifact_for_key(session, job.idempotency_key)
    if previous is not None and previous.job_id != job.id:
        replaced = previous.storage_key
        group = (previous.model_source, previous.config_digest, previous.format.value)
        session.delete(previous)
        session.flush()
        latest.on_delete(session, group)
    artifact = add_artifact(
        session, job, storage_key, info, storage_root=storage_root, format=fmt, sha256=sha256,
        size_bytes=size_bytes, model_digest=model_digest, model_source=model_source,
    )
    _close_attempts(session, [job_id], AttemptOutcome.SUCCEEDED)
    return artifact, replaced


def fail(session: Session, job_id: int, worker: str, kind: ErrorKind, error: str, *,
         retry: bool = False) -> JobStatus | None:
    """Record a failed attempt. With ``retry`` and attempts left, the job goes back to
    ``queued`` (the caller re-sends its message); otherwise it is ``failed``. Returns the new
    status, or None when the job is no longer ours."""
    row = session.execute(select(Job.attempts, Job.max_attempts).where(*_ours(job_id, worker)))
    seen = row.first()
    if seen is None:
        return None
    attempts, max_attempts = seen
    now = utcnow()
    if retry and attempts < max_attempts:
        status, values = S.QUEUED, {"queued_at": now, "last_error": error}
    else:
        status = S.FAILED
        values = {"finished_at": now,
                  "last_error": f"{error} (gave up after {attempts} attempts)" if retry else error}
    taken = session.execute(
        update(Job).where(*_ours(job_id, worker), Job.attempts == attempts)
        .values(status=status, error_kind=kind, progress=None, **values)
    ).rowcount
    if not taken:
        return None
    _close_attempts(session, [job_id], AttemptOutcome.FAILED, kind, error)
    return status


def release(session: Session, worker: str,
            why: str = "interrupted: the worker shut down") -> list[int]:
    """A worker shutting down hands its running jobs back: ``running → queued``.

    The interrupted attempt is closed as lost but does not count toward ``max_attempts``: an
    operator stopping a worker is not the job's fault. Returns the released job ids (their
    messages go back to the broker with the worker's unacknowledged ones).
    """
    ids = list(session.scalars(
        update(Job).where(Job.status == S.RUNNING, Job.worker == worker).values(
            status=S.QUEUED, worker=None, queued_at=utcnow(), progress=None,
            attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
        ).returning(Job.id)
    ))
    _close_attempts(session, ids, AttemptOutcome.LOST, ErrorKind.INTERNAL, why)
    return ids


def requeue_lost(session: Session, job_id: int, worker: str, why: str) -> bool:
    """``running → queued`` for an attempt whose process died (it counts: at the next claim a
    job past its attempts is poison). False when the job is not ours any more."""
    taken = session.execute(update(Job).where(*_ours(job_id, worker)).values(
        status=S.QUEUED, worker=None, queued_at=utcnow(), progress=None,
    )).rowcount
    if taken:
        _close_attempts(session, [job_id], AttemptOutcome.LOST, ErrorKind.INTERNAL, why)
    return bool(taken)


def cancel_jobs(session: Session, *, batch_id: int | None = None,
                job_ids: Sequence[int] | None = None) -> tuple[list[int], list[str]]:
    """Cancel every non-final job of a batch or of ``job_ids``.

    Returns the cancelled job ids and the Celery task ids of those that were running (their
    processes are to be revoked).
    """
    if (batch_id is None) == (job_ids is None):
        raise BadInputError("cancel: give a batch or job ids, not both")
    cond = Job.batch_id == batch_id if batch_id is not None else Job.id.in_(list(job_ids or []))
    rows = session.execute(
        update(Job).where(cond, Job.status.in_(_LIVE)).values(
            status=S.CANCELLED, error_kind=ErrorKind.CANCELLED, last_error="cancelled by a user",
            finished_at=utcnow(), progress=None,
        ).returning(Job.id, Job.celery_task_id)
    ).all()
    ids = [r.id for r in rows]
    running = _close_attempts(session, ids, AttemptOutcome.CANCELLED, ErrorKind.CANCELLED,
                              "cancelled by a user")
    return ids, [r.celery_task_id for r in rows if r.id in running and r.celery_task_id]


def retry_jobs(session: Session, *, batch_id: int | None = None,
               job_ids: Sequence[int] | None = None,
               all_failed: bool = False,
               skip_kinds: Sequence[ErrorKind] = ()) -> list[tuple[int, str]]:
    """``failed → pending`` with a fresh attempt budget; returns ``(job id, queue)`` to publish.

    ``attempts`` counts attempts since the last retry; the attempts table keeps them all.
    Jobs that failed with an error kind in ``skip_kinds`` stay failed (retrying bad input
    cannot help unless the input changed).
    """
    if sum(x is not None and x is not False for x in (batch_id, job_ids, all_failed)) != 1:
        raise BadInputError("retry: give exactly one of a batch, job ids or all failed jobs")
    cond = [Job.status == S.FAILED]
    if batch_id is not None:
        cond.append(Job.batch_id == batch_id)
    elif job_ids is not None:
        cond.append(Job.id.in_(list(job_ids)))
    if skip_kinds:
        cond.append(or_(Job.error_kind.is_(None), Job.error_kind.not_in(list(skip_kinds))))
    rows = session.execute(
        update(Job).where(*cond).values(status=S.PENDING, attempts=0, finished_at=None)
        .returning(Job.id, Job.queue)
    ).all()
    return sorted((r.id, r.queue) for r in rows)


def reconcile_jobs(
    session: Session, *, stale_before: datetime, pending_before: datetime,
    queued_before: datetime, on_broker: set[int] | None = None,
) -> list[tuple[int, str]]:
    """Jobs whose message is presumably lost: set ``queued`` now; returns ``(id, queue)`` to
    publish.

    * ``pending`` since before ``pending_before`` (publishing failed after the commit);
    * ``queued`` since before ``queued_before`` and not found on the broker (``on_broker``:
      the job ids with a message there, when the broker can be inspected; a duplicate message
      is harmless anyway: a second delivery cannot claim a running or finished job);
    * ``running`` with a heartbeat older than ``stale_before`` (the worker died unacked).
    """
    now = utcnow()
    found: dict[int, str] = pairs(session.execute(
        update(Job).where(Job.status == S.PENDING, Job.created_at < pending_before)
        .values(status=S.QUEUED, queued_at=now).returning(Job.id, Job.queue)
    ))
    queued = session.connection().execute(  # plain ids (100,000s), not ORM rows
        select(Job.id).where(Job.status == S.QUEUED, Job.queued_at < queued_before)
    ).scalars().all()
    waiting = sorted(set(queued).difference(found, on_broker or ()))
    for ids in id_filters(Job.id, waiting):
        found.update(pairs(session.execute(
            update(Job).where(ids, Job.status == S.QUEUED,
                              Job.queued_at < queued_before)
            .values(queued_at=now).returning(Job.id, Job.queue)
        )))
    dead = pairs(session.execute(
        update(Job).where(Job.status == S.RUNNING,
                          or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before))
        .values(status=S.QUEUED, queued_at=now, worker=None, progress=None)
        .returning(Job.id, Job.queue)
    ))
    _close_attempts(session, list(dead), AttemptOutcome.LOST, ErrorKind.INTERNAL,
                    "heartbeat went stale: the worker died or lost its connection")
    found.update(dead)
    return sorted(found.items())
