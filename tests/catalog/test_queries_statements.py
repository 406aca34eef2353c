"""The statements ``artifacts_statement`` / ``records_statement`` build, and the plain-row
records of ``artifact_records`` (their defaults, ``locate``, ``max_perplexity_increase``).

``tests/catalog/test_queries.py`` checks the rows every query returns against a Python
reference; several plans give the same rows, so it cannot tell which one a statement holds.
The plan is the point of those branches (``docs/performance.md``): here the SQLite
statement's ORDER BY and its shape are compared with the text written out below (compiled
for the dialect, no database), one documented choice per case:

- ``+column`` (an ORDER BY SQLite cannot serve from an index) where the filters select few
  rows (models, digests, batches; ``--latest`` of given models) or a range bounds another
  column; never for ``created_at`` / ``id``, nor for a range on the sort column itself;
- ``NULLS LAST`` only on a nullable sort column, the id tie-break only when the sort column
  is not ``id``;
- a page of a nullable column in two steps (the ``present`` CTE) unless the filters are
  selective or ``--latest``; a range on another column probed (the ``probe`` subquery).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mono_quant.catalog import Artifact, ArtifactQuery, Catalog, Job, artifact_records
from mono_quant.catalog.queries import _id_in, artifacts_statement, records_statement
from tests.catalog import seed as seedmod

SINCE = seedmod.T0 + timedelta(days=3)


def _sql(q: ArtifactQuery | None = None, dialect=sqlite, statement=artifacts_statement) -> str:
    return str(statement(q).compile(dialect=dialect.dialect(),
                                    compile_kwargs={"literal_binds": True}))


def _order(q: ArtifactQuery, dialect=sqlite) -> str:
    """The outer ORDER BY of a statement without a page step (everything after it)."""
    return _sql(q, dialect).rsplit(" ORDER BY ", 1)[1]


#: name -> (query, the SQLite ORDER BY it must end with); ``limit=None``: no paging step.
ORDERS = {
    "default-newest-first": ({}, "artifacts.created_at DESC, artifacts.id DESC"),
    "id-only-once": ({"order_by": "id", "descending": False}, "artifacts.id ASC"),
    "id-with-models": ({"order_by": "id", "models": ["m"]}, "artifacts.id DESC"),
    "created-at-with-models": ({"models": ["m"]},
                               "artifacts.created_at DESC, artifacts.id DESC"),
    "created-at-with-range": ({"min_sqnr": 30.0},
                              "artifacts.created_at DESC, artifacts.id DESC"),
    "size-unfiltered": ({"order_by": "size_bytes"},
                        "artifacts.size_bytes DESC, artifacts.id DESC"),
    "size-few-values-filter": ({"order_by": "size_bytes", "modes": ["static"],
                                "statuses": ["failed"]},
                               "artifacts.size_bytes DESC, artifacts.id DESC"),
    "size-models": ({"order_by": "size_bytes", "descending": False, "models": ["m"]},
                    "+artifacts.size_bytes ASC, artifacts.id ASC"),
    "size-digests": ({"order_by": "size_bytes", "model_digests": ["d"]},
                     "+artifacts.size_bytes DESC, artifacts.id DESC"),
    "size-batches": ({"order_by": "size_bytes", "batches": [2]},
                     "+artifacts.size_bytes DESC, artifacts.id DESC"),
    "size-own-range": ({"order_by": "size_bytes", "max_size": 10**6},
                       "artifacts.size_bytes DESC, artifacts.id DESC"),
    "size-other-range": ({"order_by": "size_bytes", "since": SINCE},
                         "+artifacts.size_bytes DESC, artifacts.id DESC"),
    "cosine-nulls-last": ({"order_by": "output_cosine", "descending": False},
                          "artifacts.output_cosine ASC NULLS LAST, artifacts.id ASC"),
    "cosine-own-range": ({"order_by": "output_cosine", "min_cosine": 0.9},
                         "artifacts.output_cosine DESC NULLS LAST, artifacts.id DESC"),
    "cosine-other-range": ({"order_by": "output_cosine", "min_sqnr": 30.0},
                           "+artifacts.output_cosine DESC NULLS LAST, artifacts.id DESC"),
    "cosine-size-range": ({"order_by": "output_cosine", "max_size": 10**6},
                          "+artifacts.output_cosine DESC NULLS LAST, artifacts.id DESC"),
    "sqnr-own-range": ({"order_by": "weight_sqnr_db", "min_sqnr": 30.0},
                       "artifacts.weight_sqnr_db DESC NULLS LAST, artifacts.id DESC"),
    "sqnr-cosine-range": ({"order_by": "weight_sqnr_db", "min_cosine": 0.9},
                          "+artifacts.weight_sqnr_db DESC NULLS LAST, artifacts.id DESC"),
    "perplexity-own-range": ({"order_by": "perplexity_increase",
                              "max_perplexity_increase": 1.0},
                             "artifacts.perplexity_increase DESC NULLS LAST, artifacts.id DESC"),
    "perplexity-range-other-column": ({"order_by": "size_bytes",
                                       "max_perplexity_increase": 1.0},
                                      "+artifacts.size_bytes DESC, artifacts.id DESC"),
    "latest-models": ({"latest": True, "models": ["m"]},
                      "+artifacts.created_at DESC, artifacts.id DESC"),
    "latest-models-size": ({"latest": True, "models": ["m"], "order_by": "size_bytes"},
                           "+artifacts.size_bytes DESC, artifacts.id DESC"),
    "latest-range-only": ({"latest": True, "order_by": "size_bytes", "min_sqnr": 30.0},
                          "artifacts.size_bytes DESC, artifacts.id DESC"),
    "latest-digests": ({"latest": True, "order_by": "size_bytes", "model_digests": ["d"]},
                       "artifacts.size_bytes DESC, artifacts.id DESC"),
}


@pytest.mark.parametrize("name", list(ORDERS), ids=list(ORDERS))
def test_sqlite_order_by_of_each_query(name):
    query, expected = ORDERS[name]
    assert _order(ArtifactQuery(limit=None, **query)) == expected


def test_other_databases_get_the_plain_column():
    """``+column`` is SQLite's: PostgreSQL plans from its statistics and gets the column."""
    q = ArtifactQuery(limit=None, order_by="output_cosine", models=["m"])
    assert _order(q, postgresql) == "artifacts.output_cosine DESC NULLS LAST, artifacts.id DESC"


#: name -> (query with ``limit=5``, whether the page is the two-step one, whether the range
#: is probed, how many ``+artifacts.`` terms the SQLite statement holds: the two-step page's
#: outer ORDER BY (1); the probed page's sorting step (``IS [NOT] NULL`` and ORDER BY of its
#: two halves) and the outer ORDER BY (5); a statement without a page step as ORDERS says)
PAGES = {
    "nullable-unfiltered": ({"order_by": "output_cosine"}, True, False, 1),
    "nullable-few-values-filter": ({"order_by": "output_cosine", "statuses": ["failed"]},
                                   True, False, 1),
    "nullable-models": ({"order_by": "output_cosine", "models": ["m"]}, False, False, 1),
    "nullable-digests": ({"order_by": "output_cosine", "model_digests": ["d"]},
                         False, False, 1),
    "nullable-batches": ({"order_by": "output_cosine", "batches": ["nightly"]},
                         False, False, 1),
    "nullable-latest": ({"order_by": "output_cosine", "latest": True}, False, False, 0),
    "not-null-column": ({"order_by": "size_bytes"}, False, False, 0),
    "nullable-no-limit": ({"order_by": "output_cosine", "limit": None}, False, False, 0),
    "own-range": ({"order_by": "output_cosine", "min_cosine": 0.9}, True, False, 1),
    "other-range": ({"order_by": "output_cosine", "min_sqnr": 30.0}, False, True, 5),
    "perplexity-own-range": ({"order_by": "perplexity_increase",
                              "max_perplexity_increase": 1.0}, True, False, 1),
    "perplexity-other-range": ({"order_by": "output_cosine",
                                "max_perplexity_increase": 1.0}, False, True, 5),
    "sqnr-own-range": ({"order_by": "weight_sqnr_db", "min_sqnr": 30.0}, True, False, 1),
    # created_at keeps SQLite's newest-first walk, a range on another column too
    "created-at-other-range": ({"min_sqnr": 30.0}, False, False, 0),
    "id-other-range": ({"order_by": "id", "min_sqnr": 30.0}, False, False, 0),
    # models or digests with a range: their few rows are sorted, the range is not probed
    "models-other-range": ({"order_by": "output_cosine", "models": ["m"], "min_sqnr": 30.0},
                           False, False, 1),
    "digests-other-range": ({"order_by": "output_cosine", "model_digests": ["d"],
                             "min_sqnr": 30.0}, False, False, 1),
}


@pytest.mark.parametrize("name", list(PAGES), ids=list(PAGES))
def test_page_plan_of_each_query(name):
    query, two_step, probed, plus_terms = PAGES[name]
    sql = _sql(ArtifactQuery(**{"limit": 5, **query}))
    shape = (re.search(r"\bpresent\b", sql) is not None, ") AS probe)" in sql,
             sql.count("+artifacts."))
    assert shape == (two_step, probed, plus_terms), sql
    if two_step:  # each step reads at most a page: the non-NULL rows, then the NULL ones
        assert re.findall(r"LIMIT [^\n]*", sql) == [
            "LIMIT 5 OFFSET 0)", "LIMIT 5 - (SELECT count(*) AS count_1 ", "LIMIT 5 OFFSET 0"]


@pytest.mark.parametrize(("filters", "column", "value", "plus"), [
    ({"statuses": ["failed"]}, "status", "'failed'", ""),
    ({"batches": [2]}, "batch_id", "2", "+"),  # a batch's few rows: sorted, not walked
], ids=["statuses", "batches"])
def test_job_filters_select_ids_through_the_join(filters, column, value, plus):
    """A job filter joins the jobs in a subquery of ids; the artifacts are read by id."""
    sql = _sql(ArtifactQuery(limit=None, order_by="size_bytes", **filters))
    assert sql.split("\nFROM ", 1)[1] == (
        "artifacts \nWHERE artifacts.id IN (SELECT artifacts.id \n"
        "FROM artifacts JOIN jobs ON jobs.id = artifacts.job_id \n"
        f"WHERE jobs.{column} IN ({value})) "
        f"ORDER BY {plus}artifacts.size_bytes DESC, artifacts.id DESC")


def test_records_statement_defaults_to_the_newest_100():
    sql = _sql(None, statement=records_statement)
    assert sql.endswith(
        "ORDER BY artifacts.created_at DESC, artifacts.id DESC\n LIMIT 100 OFFSET 0")
    # the stored record columns in record order, then the job id and the storage key
    names = [str(c) for c in records_statement().selected_columns]
    assert len(names) == 45
    assert names[:3] == ["artifacts.id", "artifacts.model_source", "artifacts.model_digest"]
    assert names[-3:] == ["artifacts.low_compression", "artifacts.job_id",
                          "artifacts.storage_key"]


def test_job_ids_on_the_server_database_are_one_array_parameter():
    """The jobs of a page by id on PostgreSQL: ``= ANY`` of ONE bound integer array, sorted.
    The engine is never connected (no server needed: the dialect alone picks the branch);
    the PostgreSQL catalog tests run the statement itself."""
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with Session(engine) as session:
        clause = _id_in(session, Job.id, {3, 1, 2})
    compiled = clause.compile(dialect=engine.dialect)
    assert str(compiled) == "jobs.id = ANY (%(ids)s::INTEGER[])"
    assert compiled.params == {"ids": [1, 2, 3]}
    literal = clause.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    assert str(literal) == "jobs.id = ANY (ARRAY[1, 2, 3])"


@pytest.fixture
def seeded(catalog_url):
    catalog = Catalog(catalog_url)
    with catalog.begin() as session:
        records = seedmod.seed(session, n=6)
    yield catalog, records
    catalog.dispose()


def test_records_without_a_query_are_the_newest_first(seeded):
    catalog, records = seeded
    with catalog.begin() as session:
        rows = artifact_records(session, locate=lambda key: ("p/" + key, "u/" + key))
    newest = sorted(records, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    assert [r["id"] for r in rows] == [r["id"] for r in newest]
    # the locate function, not the storage root, gives path and uri
    assert [(r["path"], r["uri"]) for r in rows] == [
        ("p/" + r["storage_key"], "u/" + r["storage_key"]) for r in rows]
    assert all(r["storage_key"].startswith(("org/", "models/")) for r in rows)


#: Perplexity increases written over the seed's six rows (ids 1-6; the seed has none).
PERPLEXITY = {1: 0.5, 2: 1.0, 3: None, 4: 1.0, 5: 2.25, 6: -math.inf}


@pytest.mark.parametrize(("bound", "kept"), [
    (1.0, [1, 2, 4, 6]),              # the boundary is kept (<=), NULL never
    (math.nextafter(1.0, 0.0), [1, 6]),
    (-math.inf, [6]),
    (math.inf, [1, 2, 4, 5, 6]),
], ids=["at-1", "below-1", "at-minus-inf", "inf"])
def test_max_perplexity_increase_keeps_its_boundary(seeded, bound, kept):
    catalog, _ = seeded
    with catalog.begin() as session:
        for artifact_id, value in PERPLEXITY.items():
            session.execute(update(Artifact).where(Artifact.id == artifact_id)
                            .values(perplexity_increase=value))
    q = ArtifactQuery(limit=None, order_by="id", descending=False,
                      max_perplexity_increase=bound)
    with catalog.begin() as session:
        rows = artifact_records(session, q, locate=lambda key: (key, key))
    assert [r["id"] for r in rows] == kept
    assert [r["perplexity_increase"] for r in rows] == [PERPLEXITY[i] for i in kept]


#: The probe of the pages below: at most PROBE_PAGES (30) pages of 5 ids in ``min_sqnr``'s
#: range are counted, and "fewer than 150" picks the sorted half.
PROBE = ("(SELECT count(*) AS count_1 \nFROM (SELECT artifacts.id AS id \nFROM artifacts \n"
         "WHERE artifacts.weight_sqnr_db >= 30.0\n LIMIT 150 OFFSET 0) AS probe) < 150")
#: Where the outer SELECT's column list ends and its WHERE begins.
OUTER = "\nFROM artifacts \nWHERE artifacts.id IN ("


def test_probed_page_on_a_not_null_column_is_two_halves_of_ids():
    """``size_bytes`` by ``min_sqnr``: the sorted half (``+column``: no index walk) takes the
    page when the probe finds few rows, the walked half the rest; the outer ORDER BY has no
    NULLS LAST (the column is NOT NULL)."""
    sql = _sql(ArtifactQuery(order_by="size_bytes", min_sqnr=30.0, limit=5))
    assert sql.split(OUTER, 1)[1] == (
        "SELECT sorted.id \nFROM (SELECT artifacts.id AS id \nFROM artifacts \n"
        "WHERE artifacts.weight_sqnr_db >= 30.0 "
        "ORDER BY +artifacts.size_bytes DESC, artifacts.id DESC\n"
        f" LIMIT CASE WHEN {PROBE} THEN 5 ELSE 0 END OFFSET 0) AS sorted "
        "UNION ALL SELECT walked.id \nFROM (SELECT artifacts.id AS id \nFROM artifacts \n"
        "WHERE artifacts.weight_sqnr_db >= 30.0 "
        "ORDER BY artifacts.size_bytes DESC, artifacts.id DESC\n"
        f" LIMIT 5 - CASE WHEN {PROBE} THEN 5 ELSE 0 END OFFSET 0) AS walked) "
        "ORDER BY +artifacts.size_bytes DESC, artifacts.id DESC\n LIMIT 5 OFFSET 0")


def test_probed_page_on_a_nullable_column_adds_the_null_rows_of_each_half():
    """``output_cosine`` by ``min_sqnr``: each half is its non-NULL rows (a CTE) and then
    its NULL rows by id, up to what the CTE left of its cap; NULLs sort last."""
    sql = _sql(ArtifactQuery(order_by="output_cosine", min_sqnr=30.0, limit=5))
    sorted_cap = f"CASE WHEN {PROBE} THEN 5 ELSE 0 END"
    in_range = "FROM artifacts \nWHERE artifacts.weight_sqnr_db >= 30.0 AND "
    assert sql.split("\n SELECT artifacts.id, ", 1)[0] == (
        f"WITH sorted AS \n(SELECT artifacts.id AS id \n{in_range}"
        "+artifacts.output_cosine IS NOT NULL "
        "ORDER BY +artifacts.output_cosine DESC, artifacts.id DESC\n"
        f" LIMIT {sorted_cap} OFFSET 0), \nwalked AS \n(SELECT artifacts.id AS id \n"
        f"{in_range}artifacts.output_cosine IS NOT NULL "
        "ORDER BY artifacts.output_cosine DESC, artifacts.id DESC\n"
        f" LIMIT 5 - {sorted_cap} OFFSET 0)")
    assert sql.split(OUTER, 1)[1] == (
        "SELECT sorted.id \nFROM sorted UNION ALL SELECT sorted_null.id \n"
        f"FROM (SELECT artifacts.id AS id \n{in_range}+artifacts.output_cosine IS NULL "
        f"ORDER BY +artifacts.id DESC\n LIMIT {sorted_cap} - (SELECT count(*) AS count_2 \n"
        "FROM sorted) OFFSET 0) AS sorted_null UNION ALL SELECT walked.id \n"
        "FROM walked UNION ALL SELECT walked_null.id \n"
        f"FROM (SELECT artifacts.id AS id \n{in_range}artifacts.output_cosine IS NULL "
        f"ORDER BY artifacts.id DESC\n LIMIT (5 - {sorted_cap}) - (SELECT count(*) AS count_3 \n"
        "FROM walked) OFFSET 0) AS walked_null) "
        "ORDER BY +artifacts.output_cosine DESC NULLS LAST, artifacts.id DESC\n"
        " LIMIT 5 OFFSET 0")
