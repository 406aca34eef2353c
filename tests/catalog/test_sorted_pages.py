"""Sorted pages of artifacts (``catalog list --order-by``, the web catalog's artifacts page):
the exact order against a Python reference, and the plans that read it from the
``(column, id)`` indexes (migration 0008), on SQLite and PostgreSQL.

The order: the sort column in the asked direction, NULLs last either way, ties by id in the
same direction, cut at the limit. On a nullable column the page is read in two steps (the
non-NULL rows through the index, then the NULL rows by id), so every field, both directions,
with and without filters, several limits, is compared over rows full of NULLs, ties and
±inf.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import insert, text

from mono_quant import QuantConfig, QuantizationInfo
from mono_quant.catalog import (
    Artifact,
    ArtifactQuery,
    Batch,
    Catalog,
    Job,
    artifact_records,
    artifacts_statement,
    info_columns,
    list_artifacts,
)
from mono_quant.catalog.filters import ORDER_FIELDS
from mono_quant.catalog.latest import recompute
from mono_quant.catalog.models import ORDER_COLUMNS
from tests.catalog import seed as seedmod

T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)
MODELS = ("hf:org/a@main", "hf:org/b@main", "hf:org/c@main", "file:models/d.pt")
BATCHES = ("nightly", "weekly", "adhoc")
STATUSES = ("succeeded",) * 6 + ("failed", "running")
CONFIGS = [QuantConfig(scheme=s, mode=m) for s in ("symmetric", "asymmetric")
           for m in ("weight_only", "static")]
#: Metric columns: a few values each (ties), NULL in about a third of the rows, and ±inf.
METRICS = ("weight_sqnr_db", "weight_sqnr_db_min", "output_sqnr_db", "output_cosine",
           "compression_ratio", "perplexity_increase", "perplexity_quant")
VALUES = (-math.inf, 0.5, 1.0, 2.0, 2.0, 3.5, 40.0, 41.0, 55.0, math.inf)
N = 240


def _templates() -> list[dict[str, Any]]:
    out = []
    for cfg in CONFIGS:
        info = QuantizationInfo(cfg, ["fc"], 8, {"torch": "2.13.0"}, {})
        columns = info_columns(info)
        columns["observer"] = columns.pop("weight_observer")  # the column's own name
        out.append(columns)
    return out


def _rows(n: int, rng: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """(jobs, artifacts, reference records): ties and NULLs in every sortable column."""
    templates, jobs, artifacts, records = _templates(), [], [], []
    for i in range(n):
        c, model = rng.randrange(len(CONFIGS)), rng.choice(MODELS)
        key = hashlib.sha256(f"sorted-{i}".encode()).hexdigest()
        batch = rng.randrange(len(BATCHES))
        status = rng.choice(STATUSES)
        created = T0 + timedelta(hours=rng.randrange(12))  # many rows per timestamp
        metrics = {m: None if rng.random() < 0.35 else rng.choice(VALUES) for m in METRICS}
        size = rng.choice((1_000, 2_000, 2_000, 5_000, 70_000))
        jobs.append({"id": i + 1, "batch_id": batch + 1, "name": f"job-{i}",
                     "model_source": model, "idempotency_key": key, "queue": "cpu",
                     "status": status, "created_at": created})
        artifacts.append({**templates[c], **metrics, "id": i + 1, "job_id": i + 1,
                          "idempotency_key": key, "model_source": model, "model_digest": None,
                          "storage_key": f"a/{key}.safetensors", "format": "safetensors",
                          "sha256": key, "size_bytes": size, "created_at": created})
        records.append({**metrics, "id": i + 1, "model_source": model, "model_digest": None,
                        "scheme": CONFIGS[c].scheme, "granularity": CONFIGS[c].granularity,
                        "mode": CONFIGS[c].mode, "format": "safetensors", "dtype": "int8",
                        "job_status": status, "batch_id": batch + 1,
                        "batch_name": BATCHES[batch], "serveable_by": "vllm",
                        "size_bytes": size, "created_at": created})
    return jobs, artifacts, records


def _fill(catalog: Catalog, n: int, seed: int = 14) -> list[dict]:
    jobs, artifacts, records = _rows(n, random.Random(seed))
    serveable = {a["serveable_by"] for a in artifacts}
    for r in records:  # as the templates say (the filter is compared on the stored value)
        r["serveable_by"] = artifacts[r["id"] - 1]["serveable_by"]
    assert serveable
    with catalog.begin() as s:
        s.execute(insert(Batch), [{"id": b + 1, "name": name, "labels": {}}
                                  for b, name in enumerate(BATCHES)])
        s.execute(Job.__table__.insert(), jobs)  # Core: the columns' own names
        s.execute(Artifact.__table__.insert(), artifacts)
        recompute(s)
    with catalog.engine.begin() as conn:
        if catalog.engine.dialect.name == "postgresql":
            for table in ("batches", "jobs", "artifacts"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if catalog.engine.dialect.name == "postgresql"
                          else "ANALYZE"))
    return records


def _reference(records: list[dict], q: ArtifactQuery) -> list[int]:
    """The ids the query must return (a bound on a NULL metric never matches)."""
    cap = q.max_perplexity_increase
    rows = [r for r in records
            if (q.min_sqnr is None or r["weight_sqnr_db"] is not None)
            and (cap is None or (r["perplexity_increase"] is not None
                                 and r["perplexity_increase"] <= cap))
            and seedmod._matches(r, q)]
    return seedmod.reference(rows, q)


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


FILTERS = {
    "none": {},
    "mode": {"modes": ["static"]},
    "scheme+min-sqnr": {"schemes": ["asymmetric"], "min_sqnr": 2.0},
    "one-model": {"models": [MODELS[1]]},
    "batch-name": {"batches": ["weekly"]},
    "status": {"statuses": ["failed", "running"]},
    "max-size": {"max_size": 2_000},
    "since": {"since": T0 + timedelta(hours=9)},
    "min-cosine": {"min_cosine": 1.0},
    "max-perplexity-increase": {"max_perplexity_increase": 3.5},
    "latest": {"latest": True},
}
LIMITS = (1, 7, 60, 1000, None)


def test_every_sort_field_and_direction_matches_the_python_reference(catalog):
    records = _fill(catalog, N)
    for field in ORDER_FIELDS:
        column = field if field != "id" else None
        values = {r[column] for r in records} if column in METRICS else set()
        assert column not in METRICS or (None in values and len(values) < N // 4), field
    checked = 0
    with catalog.begin() as s:
        for field in ORDER_FIELDS:
            for descending in (True, False):
                for name, filters in FILTERS.items():
                    for limit in LIMITS:
                        q = ArtifactQuery(order_by=field, descending=descending, limit=limit,
                                          **filters)
                        want = _reference(records, q) if not q.latest else None
                        got = [a.id for a in list_artifacts(s, q)]
                        if want is None:  # --latest: the reference's own grouping
                            want = seedmod.reference(
                                [dict(r, config=r["mode"] + r["scheme"]) for r in records], q)
                        assert got == want, (field, descending, name, limit)
                        if limit == 7:  # the plain rows (catalog list, the web pages) agree
                            plain = artifact_records(s, q, locate=lambda key: (key, key))
                            assert [r["id"] for r in plain] == want, (field, name)
                        checked += bool(got)
    assert checked > len(ORDER_FIELDS) * 2 * len(FILTERS) * len(LIMITS) * 0.9


def test_every_sortable_column_has_an_index_it_leads():
    # id: the primary key; model_source: (model_source, created_at), sorting a model's ties
    assert set(ORDER_COLUMNS) == set(ORDER_FIELDS) - {"id", "model_source"}
    leading = {index.columns[0].name for index in Artifact.__table__.indexes}
    assert set(ORDER_FIELDS) - {"id"} <= leading


# ---- plans ---------------------------------------------------------------------------------

PLAN_ROWS = 3000


def _sqlite_plan(conn, sql: str) -> list[tuple[int, int, str]]:
    return [(r[0], r[1], r[3]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql))]


def _pg_nodes(plan: dict) -> list[dict]:
    nodes = [plan]
    for child in plan.get("Plans", ()):
        nodes += _pg_nodes(child)
    return nodes


def _check_plan(catalog: Catalog, q: ArtifactQuery, index: str) -> None:
    """The page reads ``index`` and sorts at most twice the limit (the two-step page),
    never the rows the filters select."""
    sql = str(artifacts_statement(q).compile(catalog.engine,
                                              compile_kwargs={"literal_binds": True}))
    with catalog.engine.connect() as conn:
        if catalog.engine.dialect.name == "sqlite":
            plan = _sqlite_plan(conn, sql)
            details = " | ".join(d for _, _, d in plan)
            assert re.search(rf"INDEX {index}\b", details), details
            # a sort inside a step (a subquery's node) would sort the filtered rows; only
            # the outer one, of the page's at most 2 x limit rows, may sort
            inner_sorts = [d for _, parent, d in plan if "TEMP B-TREE" in d and parent != 0]
            assert not inner_sorts, details
            return
        (doc,) = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)).scalar_one()
    nodes = _pg_nodes((doc if isinstance(doc, dict) else json.loads(doc))["Plan"])
    assert any(n.get("Index Name") == index for n in nodes), nodes
    for node in nodes:
        if node["Node Type"] in ("Sort", "Incremental Sort"):
            (child,) = node["Plans"]
            read = child["Actual Rows"] * child["Actual Loops"]
            assert read <= 2 * q.limit, (read, node)


def test_a_sorted_page_is_read_through_the_sort_columns_index(catalog):
    """The web catalog's sorted artifacts page (size over the static half, the nullable
    metrics, both directions with the NULLs last) reads the column's ``(column, id)`` index
    in order: no sort of every row the filters select (before migration 0008 there was no
    such index and both databases sorted them all)."""
    _fill(catalog, PLAN_ROWS)
    for field in ("size_bytes", "output_cosine", "weight_sqnr_db_min", "perplexity_quant"):
        for descending in (False, True):
            for filters in ({}, {"modes": ["static"]}):
                q = ArtifactQuery(order_by=field, descending=descending, limit=20, **filters)
                _check_plan(catalog, q, f"ix_artifacts_{field}_id")


def test_sqlite_reads_a_selective_filter_first(catalog):
    """One model's (or one batch's) rows sorted by a metric: SQLite, without range
    statistics, is steered to read the filter's index and sort those few rows, not to walk
    the metric's whole index skipping the other models' rows. A range on another column is
    probed: the statement holds both plans (the range's index, then a sort; the sort
    column's index), and a bounded count of the range picks one."""
    if catalog.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL chooses from its statistics")
    _fill(catalog, PLAN_ROWS)
    cases = {
        "ix_artifacts_model_source": ArtifactQuery(models=[MODELS[0]], order_by="output_cosine"),
        "ix_jobs_batch_id": ArtifactQuery(batches=[2], order_by="weight_sqnr_db"),
        "ix_artifacts_created_at": ArtifactQuery(since=T0 + timedelta(hours=11),
                                                 order_by="size_bytes", descending=False),
    }
    for index, q in cases.items():
        sql = str(artifacts_statement(q).compile(catalog.engine,
                                                  compile_kwargs={"literal_binds": True}))
        with catalog.engine.connect() as conn:
            details = " | ".join(d for _, _, d in _sqlite_plan(conn, sql))
        assert re.search(rf"INDEX {index}", details), (index, details)
        walks = f"ix_artifacts_{q.order_by}_id" in details
        assert walks == (q.since is not None), (index, details)  # the probed one has both


def test_the_range_probe_picks_the_plan_by_the_range_size(catalog, monkeypatch):
    """The same order from either plan the probe picks (a range of a few rows read first, a
    wide one walked), on both databases (PostgreSQL always walks, its planner choosing)."""
    from mono_quant.catalog import queries

    records = _fill(catalog, N)
    with catalog.begin() as s:
        for pages in (1, 10_000):  # every range "wide", then every range "narrow"
            monkeypatch.setattr(queries, "PROBE_PAGES", pages)
            for field in ("size_bytes", "output_cosine"):
                for filters in ({"since": T0 + timedelta(hours=3)}, {"min_sqnr": 1.0}):
                    for descending in (True, False):
                        q = ArtifactQuery(order_by=field, descending=descending, limit=5,
                                          **filters)
                        got = [a.id for a in list_artifacts(s, q)]
                        assert got == _reference(records, q), (pages, field, filters)


@pytest.mark.parametrize("descending", [True, False], ids=["desc", "asc"])
@pytest.mark.parametrize("field", ["size_bytes", "output_cosine"])
def test_the_probe_reads_one_plan_and_gives_the_other_none(catalog, monkeypatch, field,
                                                           descending):
    """Which plan the range probe picks, seen in the page's two halves of ids (SQLite):
    a range of fewer rows than ``PROBE_PAGES`` pages is read and sorted (the "sorted" half
    holds the page, the "walked" half nothing); a range of exactly that many rows or more
    is walked (two pages here: the boundary is a range of exactly twice the limit). Both
    give the reference's page. On a nullable column each half is two reads (the non-NULL
    rows, then the NULL rows the page still has room for)."""
    if catalog.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's probe is 1 = 0: it always walks")
    from mono_quant.catalog import queries

    records = _fill(catalog, N)
    since = T0 + timedelta(hours=8)
    in_range = sum(r["created_at"] >= since for r in records)
    assert in_range == 82  # even: a page of 41 probes exactly two pages of rows
    halves = []
    page = queries._page
    monkeypatch.setattr(queries, "_page", lambda q, c, ids: halves.append(ids) or page(q, c, ids))
    monkeypatch.setattr(queries, "PROBE_PAGES", 2)
    with catalog.begin() as s:
        for limit, plan in ((42, "sorted"), (41, "walked")):
            q = ArtifactQuery(order_by=field, descending=descending, since=since,
                              limit=limit)
            want = _reference(records, q)
            assert [a.id for a in list_artifacts(s, q)] == want
            ids = [s.scalars(select).all() for select in halves.pop()]  # 2 or 4 reads
            half = len(ids) // 2
            got = {"sorted": [i for part in ids[:half] for i in part],
                   "walked": [i for part in ids[half:] for i in part]}
            assert sorted(got[plan]) == sorted(want) and len(want) == limit, plan
            assert got["walked" if plan == "sorted" else "sorted"] == [], plan
