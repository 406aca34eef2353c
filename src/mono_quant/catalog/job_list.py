"""Listing jobs a page at a time (the ``jobs`` command), fast in a 100,000-job batch.

Pages are keyset pages on the job id (``WHERE id > :after ORDER BY id LIMIT n``), not
``OFFSET``: page 1,000 costs what page 1 costs. A batch filter, alone or with statuses, is
served by ``ix_jobs_batch_id_status_id`` (in id order within each status); without one the
primary key is walked. The large JSON columns (spec, model source) are not loaded.

Example:
    with catalog.begin() as session:
        page = list_jobs(session, batch_id=7, statuses=["failed"], limit=50)
        more = list_jobs(session, batch_id=7, statuses=["failed"], after_id=page.next_after)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from mono_quant.catalog.models import Job, JobStatus
from mono_quant.errors import BadInputError

__all__ = ["MAX_PAGE", "JobPage", "list_jobs"]

#: The largest page :func:`list_jobs` returns (a bigger ``limit`` is an error, not a slow
#: query).
MAX_PAGE = 10_000


@dataclass(frozen=True)
class JobPage:
    """One page of jobs in id order; ``next_after`` is the ``after_id`` of the next page
    (None on the last page)."""

    jobs: list[Job]
    next_after: int | None


def list_jobs(
    session: Session, *, batch_id: int | None = None, statuses: Sequence[str] = (),
    queue: str | None = None, after_id: int | None = None, limit: int = 100,
) -> JobPage:
    """Jobs matching every given filter, ``limit`` at most, after ``after_id``."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadInputError(f"jobs page size {limit}: expected 1 to {MAX_PAGE}")
    try:
        wanted = [JobStatus(s) for s in statuses]
    except ValueError as e:
        allowed = ", ".join(s.value for s in JobStatus)
        raise BadInputError(f"job status {e}: expected one of {allowed}") from e
    stmt = select(Job).options(defer(Job.spec), defer(Job.model_source_json))
    if batch_id is not None:
        stmt = stmt.where(Job.batch_id == batch_id)
    if len(wanted) == 1:
        stmt = stmt.where(Job.status == wanted[0])
    elif wanted:
        stmt = stmt.where(Job.status.in_(wanted))
    if queue is not None:
        stmt = stmt.where(Job.queue == queue)
    if after_id is not None:
        stmt = stmt.where(Job.id > after_id)
    jobs = list(session.scalars(stmt.order_by(Job.id).limit(limit + 1)))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JobPage(jobs, jobs[-1].id if more else None)
