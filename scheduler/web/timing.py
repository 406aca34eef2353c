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

from sqlalchemy import ColumnElement, Float, Subquery, case, func, select
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
    if key == "running":
        return Attempt.outcome.is_(None)
    return Attempt.outcome == AttemptOutcome(key)


def _per_job(batch_id: int) -> Subquery:
    """Per job of the batch that has attempts: its first start, last finish, and per
    :data:`RUN_KEYS` the attempts counted and their seconds summed.

    The attempts are read through their ``(job_id, number)`` index between the batch's lowest
    and highest job id (both read from the ``(batch_id, id)`` index), then kept if their job is
    in the batch. The range is what makes the plan: given only ``job_id IN (the batch's
    jobs)``, PostgreSQL hashed the batch's 1,000 jobs and scanned all 100,000 attempts
    (~40 ms); with the range it reads the batch's ~1,000 attempts (~2 ms). Batches submitted
    side by side interleave their ids: the range then covers both, still bounded, still
    correct (the IN keeps only this batch's attempts).
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
        select(Attempt.job_id, func.min(Attempt.started_at).label("first"),
               func.max(Attempt.finished_at).label("last"), *per_kind)
        .where(Attempt.job_id.between(lo, hi),
               Attempt.job_id.in_(select(Job.id).where(in_batch)))
        .group_by(Attempt.job_id)
        .subquery()
    )


def time_spent(session: Session, batch_id: int) -> dict[str, Any]:
    """Where a batch's time went: seconds the attempts ran per outcome ("running" for those
    not finished: not counted yet), seconds the jobs waited for their first attempt (summed
    over jobs: they wait side by side), and the wall time from the first job created to the
    last attempt finished.

    One statement, one pass: the batch's attempts are summed per job (:func:`_per_job`), then
    joined to the batch's jobs (read in id order from the ``(batch_id, id)`` index) and summed
    over the batch. ``run_s`` has the outcomes that occur, in :data:`RUN_KEYS` order.
    """
    per_job = _per_job(batch_id)
    since = func.coalesce(Job.queued_at, Job.created_at)
    totals = session.execute(
        select(func.min(Job.created_at).label("first_created"),
               func.max(per_job.c["last"]).label("last_finished"),
               func.sum(seconds_between(since, per_job.c["first"])).label("waited"),
               *(func.sum(per_job.c[f"{p}_{key}"]).label(f"{p}_{key}")
                 for key in RUN_KEYS for p in ("n", "s")))
        .select_from(Job).outerjoin(per_job, per_job.c.job_id == Job.id)
        .where(Job.batch_id == batch_id)
    ).one()._mapping
    run = {key: _round(totals[f"s_{key}"]) for key in RUN_KEYS if totals[f"n_{key}"]}
    first, last = totals["first_created"], totals["last_finished"]
    wall = None if first is None or last is None else (last - first).total_seconds()
    return {"run_s": run, "waiting_s": _round(totals["waited"]),
            "wall_s": None if wall is None else _round(wall)}
