"""The batch page reads only its batch's rows, whatever the size of the catalog.

On PostgreSQL with 20 batches of 1,000 jobs (one attempt each, statistics gathered), every
statement the batch page runs for the last batch is EXPLAIN ANALYZEd, and the rows its scans
visit (returned plus removed by a filter, times loops) are summed. Before the one-pass time
aggregate and the ``(batch_id, id)`` index, the page visited the whole catalog: the attempts
table scanned whole for each of two aggregates, and the page of jobs read along the primary
key with 19,000 rows filtered out. PostgreSQL only: SQLite's planner has no cost model that
would choose those plans, and its EXPLAIN gives no row counts.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, insert, text
from sqlalchemy.orm import Session

from mono_quant.catalog import Attempt, Batch, Catalog, Job
from mono_quant.scheduler.web.views import batch_detail

BATCHES, PER_BATCH = 20, 1000
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def _visited(plan: dict) -> float:
    """Rows a plan's table scans visited: returned plus filtered out, per loop, summed (a
    bitmap index scan is counted with its heap scan)."""
    own = 0.0
    if "Relation Name" in plan:
        own = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * plan.get(
            "Actual Loops", 1)
    return own + sum(_visited(p) for p in plan.get("Plans", ()))


@pytest.fixture
def big_catalog(pg_database):
    url = pg_database
    catalog = Catalog(url)
    with catalog.engine.begin() as conn:
        conn.execute(text("TRUNCATE artifacts, attempts, jobs, batches RESTART IDENTITY CASCADE"))
        conn.execute(insert(Batch), [{"id": b + 1, "name": f"b{b}", "labels": {},
                                      "submitted_at": T0} for b in range(BATCHES)])
        jobs = [{"id": i + 1, "batch_id": i // PER_BATCH + 1, "name": f"j{i}",
                 "model_source": "m", "model_source_json": {}, "spec": {},
                 "idempotency_key": f"{i:064x}", "queue": "cpu", "status": "succeeded",
                 "attempts": 1, "max_attempts": 3, "created_at": T0 + timedelta(seconds=i)}
                for i in range(BATCHES * PER_BATCH)]
        conn.execute(insert(Job), jobs)
        conn.execute(insert(Attempt), [
            {"job_id": j["id"], "number": 1, "started_at": j["created_at"] + timedelta(seconds=5),
             "finished_at": j["created_at"] + timedelta(seconds=65), "outcome": "succeeded"}
            for j in jobs])
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    yield catalog
    with catalog.engine.begin() as conn:
        conn.execute(text("TRUNCATE artifacts, attempts, jobs, batches RESTART IDENTITY CASCADE"))
    catalog.dispose()


def test_batch_page_visits_only_its_batch(big_catalog):
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    engine = big_catalog.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as session:
            data = batch_detail(session, BATCHES)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert data["jobs_total"] == PER_BATCH and len(data["jobs"]) == 100
    assert data["time"]["run_s"] == pytest.approx({"succeeded": 60.0 * PER_BATCH})
    visited = {}
    with engine.connect() as conn:
        for statement, parameters in statements:
            row = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement,
                                       parameters).scalar_one()
            plan = (json.loads(row) if isinstance(row, str) else row)[0]["Plan"]
            visited[statement.split("FROM")[0][:60]] = _visited(plan)
    # the batch's own rows: its 1,000 jobs and 1,000 attempts, read a few times over
    assert all(n <= 5 * PER_BATCH for n in visited.values()), visited
