"""Where a batch's time went, summed by the database (one pass, no rows to Python).

:class:`seconds_between` is ``end - start`` in seconds on both backends: ``julianday``
arithmetic on SQLite (which stores UTC as text), ``EXTRACT(EPOCH FROM …)`` on PostgreSQL.

Example:
    with catalog.begin() as session:
        time_spent(session, batch_id=7)
        # {"run_s": {"succeeded": 812.4, "failed": 3.1}, "waiting_s": 95.0, "wall_s": 402.7, …}
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from mono_quant.catalog import Attempt, Job

__all__ = ["seconds_between", "time_spent"]


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


def time_spent(session: Session, batch_id: int) -> dict[str, Any]:
    """Where a batch's time went: seconds the attempts ran per outcome ("running" for those
    not finished: not counted yet), seconds the jobs waited for their first attempt (summed
    over jobs: they wait side by side), and the wall time from the first job created to the
    last attempt finished. Two queries, each one pass over the batch's rows."""
    in_batch = Job.batch_id == batch_id
    run: dict[str, float] = {}
    last = None
    for outcome, seconds, finished in session.execute(
        select(Attempt.outcome,
               func.sum(seconds_between(Attempt.started_at, Attempt.finished_at)),
               func.max(Attempt.finished_at))
        .join(Job, Job.id == Attempt.job_id).where(in_batch).group_by(Attempt.outcome)
    ):
        run[outcome.value if outcome else "running"] = _round(seconds)
        last = finished if last is None or (finished is not None and finished > last) else last
    per_job = (
        select(Job.created_at.label("created"),
               func.coalesce(Job.queued_at, Job.created_at).label("since"),
               func.min(Attempt.started_at).label("started"))
        .outerjoin(Attempt, Attempt.job_id == Job.id).where(in_batch)
        .group_by(Job.id, Job.created_at, Job.queued_at)
        .subquery()
    )
    waited, first = session.execute(
        select(func.sum(seconds_between(per_job.c.since, per_job.c.started)),
               func.min(per_job.c.created))
    ).one()
    wall = None if first is None or last is None else (last - first).total_seconds()
    return {"run_s": run, "waiting_s": _round(waited),
            "wall_s": None if wall is None else _round(wall)}
