"""Where a batch's time went, summed by the database (one statement, one pass, no rows to
Python).

:class:`seconds_between` is ``end - start`` in seconds on both backends: ``julianday``
arithmetic on SQLite (which stores UTC as text), ``EXTRACT(EPOCH FROM …)`` on PostgreSQL.

Example:
    with catalog.begin() as session:
        time_spent(session, batch_id=7)
        # {"run_s": {"succeeded": 812.4, "failed": 3.1}, "waiting_s": 95.0, "wall_s": 402.7, …}
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Float, Subquery, and_, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from mono_quant.catalog import Attempt, AttemptOutcome, Job

__all__ = ["RUN_KEYS", "seconds_between", "time_spent"]


class seconds_between(FunctionElement):  # an SQL function, named like one
    """``end - start`` in seconds (NULL if either is NULL)."""

    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(seconds_between, "sqlite")
def _sqlite(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = list(element.clauses)
    return (f"((julianday({compiler.process(end, **kw)}) - "
            f"julianday({compiler.process(start, **kw)})) * 86400.0)")


@compiles(seconds_between, "postgresql")
def _postgresql(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = list(element.clauses)
    return (f"EXTRACT(EPOCH FROM ({compiler.process(end, **kw)} - "
            f"{compiler.process(start, **kw)}))")


def _round(x: Any) -> float:
    return round(float(x or 0.0), 3)


#: The keys of ``run_s``, in the order they are shown: attempts still running, then the
#: outcomes alphabetically (the order SQLite's ``GROUP BY outcome`` gave before).
RUN_KEYS = ("running", *sorted(o.value for o in AttemptOutcome))


def _outcome_is(key: str) -> ColumnElement[bool]:
    if key == "running":  # an attempt (number is NOT NULL; NULL: a job without attempts)
        return and_(Attempt.number.is_not(None), Attempt.outcome.is_(None))
    return Attempt.outcome == AttemptOutcome(key)


def _per_job(batch_id: int) -> Subquery:
    """Per job of the batch: when it was created and began to wait, its first attempt's
    start, its last attempt's finish, and per :data:`RUN_KEYS` its attempts counted and
    their seconds summed.

    The batch's jobs come from the ``(batch_id, id)`` index; their attempts are joined on
    ``job_id`` and also bounded to the batch's lowest and highest job id (two index lookups).
    The bound is what makes PostgreSQL's plan: with the join alone it hashed the batch's
    1,000 jobs and scanned all 100,000 attempts (~40 ms); with it, it reads the ~1,000
    attempts in that range from the ``(job_id, number)`` index (~2 ms). Batches submitted
    side by side interleave their ids: the range then covers both, still bounded, and the
    join keeps only this batch's attempts.
    """
    in_batch = Job.batch_id == batch_id
    lo = select(func.min(Job.id)).where(in_batch).scalar_subquery()
    hi = select(func.max(Job.id)).where(in_batch).scalar_subquery()
    seconds = seconds_between(Attempt.started_at, Attempt.finished_at)
    per_kind = []
    for key in RUN_KEYS:
        is_key = _outcome_is(key)
        per_kind += [func.count(case((is_key, 1))).label(f"n_{key}"),
                     func.sum(case((is_key, seconds))).label(f"s_{key}")]
    return (
        select(Job.created_at.label("created"),
               func.coalesce(Job.queued_at, Job.created_at).label("since"),
               func.min(Attempt.started_at).label("first"),
               func.max(Attempt.finished_at).label("last"), *per_kind)
        .select_from(Job)
        .outerjoin(Attempt, and_(Attempt.job_id == Job.id, Attempt.job_id.between(lo, hi)))
        .where(in_batch)
        .group_by(Job.id, Job.created_at, Job.queued_at)
        .subquery()
    )


def time_spent(session: Session, batch_id: int) -> dict[str, Any]:
    """Where a batch's time went: seconds the attempts ran per outcome ("running" for those
    not finished: not counted yet), seconds the jobs waited for their first attempt (summed
    over jobs: they wait side by side), and the wall time from the first job created to the
    last attempt finished.

    One statement, one pass over the batch's jobs and their attempts (:func:`_per_job`),
    summed over the batch. ``run_s`` has the outcomes that occur, in :data:`RUN_KEYS` order.
    """
    per_job = _per_job(batch_id)
    totals = session.execute(
        select(func.min(per_job.c["created"]).label("first_created"),
               func.max(per_job.c["last"]).label("last_finished"),
               func.sum(seconds_between(per_job.c["since"], per_job.c["first"]))
               .label("waited"),
               *(func.sum(per_job.c[f"{p}_{key}"]).label(f"{p}_{key}")
                 for key in RUN_KEYS for p in ("n", "s")))
    ).one()._mapping
    run = {key: _round(totals[f"s_{key}"]) for key in RUN_KEYS if totals[f"n_{key}"]}
    first, last = totals["first_created"], totals["last_finished"]
    wall = None if first is None or last is None else (last - first).total_seconds()
    return {"run_s": run, "waiting_s": _round(totals["waited"]),
            "wall_s": None if wall is None else _round(wall)}
