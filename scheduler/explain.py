"""Why ``retry`` or ``cancel`` left jobs alone: no operation answers "0 job(s)" without a word.

:func:`skipped_jobs` looks at the jobs a command selected but did not change and gives each
group a reason a person can act on (``bad_input`` jobs need ``--include-bad-input``; a
cancelled job is not retried; a finished job cannot be cancelled).

Example:
    >>> from mono_quant.catalog import ErrorKind, JobStatus
    >>> retry_reason(JobStatus.FAILED, ErrorKind.BAD_INPUT)
    'failed with bad_input: retrying cannot help until the input changes (--include-bad-input retries anyway)'
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mono_quant.catalog import ErrorKind, Job, JobStatus

__all__ = ["PERMANENT_KINDS", "Skipped", "cancel_reason", "retry_reason", "skipped_jobs"]

#: Failures that a retry cannot fix until the model, data or config changes.
PERMANENT_KINDS = (ErrorKind.BAD_INPUT, ErrorKind.BAD_CONFIG)


@dataclass(frozen=True)
class Skipped:
    """Jobs a command left alone for one reason."""

    reason: str
    job_ids: tuple[int, ...]

    def line(self, verb: str, shown: int = 10) -> str:
        ids = ", ".join(map(str, self.job_ids[:shown]))
        more = f" (+{len(self.job_ids) - shown} more)" if len(self.job_ids) > shown else ""
        return f"not {verb} {len(self.job_ids)} job(s) {ids}{more}: {self.reason}"

    def to_dict(self) -> dict[str, object]:
        return {"reason": self.reason, "jobs": list(self.job_ids)}


def retry_reason(status: JobStatus, kind: ErrorKind | None) -> str:
    """Why ``retry`` does not re-enqueue a job in this state."""
    if status is JobStatus.FAILED and kind in PERMANENT_KINDS:
        return (f"failed with {kind.value}: retrying cannot help until the input changes "
                "(--include-bad-input retries anyway)")
    if status is JobStatus.CANCELLED:
        return ("cancelled by a user: retry re-enqueues failed jobs only; submit the manifest "
                "again to redo them")
    if status is JobStatus.SUCCEEDED:
        return "succeeded: nothing to retry (submit --force redoes a job)"
    return f"{status.value}: not failed (yet)"


def cancel_reason(status: JobStatus, kind: ErrorKind | None) -> str:
    """Why ``cancel`` does not cancel a job in this state."""
    return f"already {status.value}: only pending, queued and running jobs can be cancelled"


def skipped_jobs(
    session: Session, *, batch_id: int | None = None, job_ids: Sequence[int] | None = None,
    failed_only: bool = False, done: Iterable[int] = (),
    reason: Callable[[JobStatus, ErrorKind | None], str] = retry_reason,
    ignore: Collection[JobStatus] = (),
) -> list[Skipped]:
    """The selected jobs not in ``done``, grouped by the reason they were left alone.

    Jobs in an ``ignore`` state are left out (``retry --batch`` need not list the jobs that
    succeeded; ``retry --job J`` names them, so it explains them).
    """
    stmt = select(Job.id, Job.status, Job.error_kind).order_by(Job.id)
    if batch_id is not None:
        stmt = stmt.where(Job.batch_id == batch_id)
    if job_ids is not None:
        stmt = stmt.where(Job.id.in_(list(job_ids)))
    if failed_only:
        stmt = stmt.where(Job.status == JobStatus.FAILED)
    if ignore:
        stmt = stmt.where(Job.status.not_in(list(ignore)))
    changed = set(done)
    groups: dict[str, list[int]] = {}
    for job_id, status, kind in session.execute(stmt):
        if job_id not in changed:
            groups.setdefault(reason(status, kind), []).append(job_id)
    return [Skipped(text, tuple(ids)) for text, ids in groups.items()]
