"""The fast paths of bulk submits and status (issue 16) give what the reference paths give, on
SQLite and PostgreSQL, in the number of statements they promise."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from sqlalchemy import event, func, select, text

from mono_quant.catalog import Catalog, Job, JobStatus, queries
from mono_quant.catalog import jobs as js
from mono_quant.catalog.batches import JobRow, SerializedRows, add_jobs, create_batch, id_runs

S = JobStatus


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


@contextmanager
def statements(catalog: Catalog):
    """The SQL statements the engine sends inside the block, and their parameters."""
    sent: list[str] = []
    params: list = []

    def record(conn, cursor, statement, parameters, *args):
        sent.append(statement)
        params.append(parameters)


    event.listen(catalog.engine, "before_cursor_execute", record)
    try:
        yield sent, params
    finally:
        event.remove(catalog.engine, "before_cursor_execute", record)


def _row(i: int, spec) -> JobRow:
    return JobRow(name=f"j{i}", model_source="factory:m:f", model_source_json={"i": i},
                  spec=spec, idempotency_key=f"{i:064x}", queue="cpu", max_attempts=3)


def test_json_text_rows_are_stored_as_the_serialiser_would(catalog):
    """Rows given as dicts (serialised by the column) and as their text (plain tuples in a
    SerializedRows, as a submit builds them) store the same bytes, and the same columns."""
    spec = {"version": 1, "model": {"kwargs": {"név": "✓", "x": [1, 2.5, None]}}, "b": True}
    with catalog.begin() as s:
        batch, (a,) = create_batch(s, [_row(0, spec)], name="t")
        (b,) = add_jobs(s, batch.id, SerializedRows([tuple(_row(1, json.dumps(spec))._replace(
            model_source_json=json.dumps({"i": 0}), name="j0"))]))
    with catalog.begin() as s:
        specs = dict(s.execute(select(Job.id, Job.spec)).all())
        raw = [tuple(r) for r in s.execute(text(
            "SELECT batch_id, name, model_source, CAST(model_source_json AS TEXT), "
            "CAST(spec AS TEXT), queue, status, attempts, max_attempts, queued_at "
            "FROM jobs ORDER BY id"))]
    assert specs[a] == specs[b] == spec  # not double-encoded
    assert len(raw) == 2 and raw[0] == raw[1]


def test_id_runs():
    assert id_runs([]) == ([], [])
    assert id_runs([5, 5, 4]) == ([(4, 5)], [])
    assert id_runs([3, 1, 10, 11, 12, 20]) == ([(10, 12)], [1, 3, 20])


def test_mark_queued_moves_exactly_the_ids_in_few_statements(catalog):
    with catalog.begin() as s:
        _, ids = create_batch(s, [_row(i, {}) for i in range(3000)], name="t")
    wanted = ids[:2000] + ids[2001:3000:2] + [ids[0]]  # one run, 500 strays, a duplicate
    with catalog.begin() as s, statements(catalog) as (sent, _):
        assert js.mark_queued(s, wanted) == 2000 + 500
    updates = [q for q in sent if q.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 2  # one BETWEEN, one IN list of the strays
    with catalog.begin() as s:
        queued = set(s.scalars(select(Job.id).where(Job.status == S.QUEUED)))
    assert queued == set(wanted)


def test_status_counts_equal_a_group_by_and_read_the_batch_index(catalog, backend):
    with catalog.begin() as s:
        _, ids = create_batch(s, [_row(i, {}) for i in range(60)], name="a")
        create_batch(s, [_row(100 + i, {}) for i in range(7)], name="other")
        js.mark_queued(s, ids[:25])
        s.execute(text("UPDATE jobs SET status = 'failed' WHERE id IN (:a, :b)"),
                  {"a": ids[30], "b": ids[31]})
    with catalog.begin() as s:
        counts = queries.job_status_counts(s, 1)
        reference = dict(s.execute(select(Job.status, func.count()).where(Job.batch_id == 1)
                                   .group_by(Job.status)).all())
    assert {k: v for k, v in counts.items() if v} == reference
    assert reference == {S.QUEUED: 25, S.PENDING: 33, S.FAILED: 2}
    assert set(counts) == set(JobStatus)
    with catalog.begin() as s, statements(catalog) as (sent, params):
        queries.job_status_counts(s, 1)
        assert len(sent) == 1  # one statement for every status
        conn = s.connection()
        if backend == "postgresql":  # a tiny table: make the planner show what it can use
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            # with statistics: without them the 67-row table's smaller (batch_id, id) index
            # (migration 0006) looked as good; at 100,000 analyzed jobs the planner picks the
            # status index (index-only, 0.14 ms for two statuses)
            conn.exec_driver_sql("ANALYZE jobs")
        explain = "EXPLAIN " if backend == "postgresql" else "EXPLAIN QUERY PLAN "
        plan = "\n".join(str(r[-1]) for r in conn.exec_driver_sql(explain + sent[0],
                                                                  params[0]))
    assert "ix_jobs_batch_id_status_id" in plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan and "SCAN jobs" not in plan



def test_key_lookups_share_one_key_list_across_chunks(catalog, monkeypatch):
    """A submit's two key lookups (artifacts, live jobs) take one KeyList: sorted and bound
    once, in as many statements as it has chunks, each finding exactly its keys."""
    from mono_quant.catalog import batches

    with catalog.begin() as s:
        _, ids = create_batch(s, [_row(i, {}) for i in range(7)], name="t")
        s.execute(Job.__table__.update().where(Job.id == ids[3]).values(status=S.SUCCEEDED))
    monkeypatch.setattr(batches, "KEY_CHUNK", 3)
    wanted = [f"{i:064x}" for i in (6, 3, 0, 6, 99, 5, 2)]  # a repeat, a final job, a stranger
    keys = batches.KeyList(wanted)
    assert keys.chunks == [[f"{i:064x}" for i in (0, 2, 3)], [f"{i:064x}" for i in (5, 6, 99)]]
    with catalog.begin() as s, statements(catalog) as (sent, _):
        assert batches.existing_artifacts(s, keys) == {}
        live = batches.jobs_in_flight(s, keys)
    assert live == {f"{i:064x}": ids[i] for i in (0, 2, 5, 6)}
    assert len(sent) == 4  # two chunks, two lookups
    with catalog.begin() as s:  # plain keys give the same
        assert batches.jobs_in_flight(s, wanted) == live
