"""``artifact_records``: the records of a query read as plain rows (what the web catalog's
artifact tables show) equal ``artifact_record`` over the ORM objects, field for field and in
the same order, on SQLite and PostgreSQL; the ids and their order also match the seed's
pure-Python reference."""

from __future__ import annotations

import pytest

from mono_quant.catalog import (
    ArtifactQuery,
    Batch,
    Catalog,
    Job,
    artifact_record,
    artifact_records,
    list_artifacts,
    queries,
)
from tests.catalog import seed as seedmod

QUERIES = {
    "newest 100": ArtifactQuery(),
    "batch by name": ArtifactQuery(batches=["weekly"]),
    "batch id and status": ArtifactQuery(batches=[3], statuses=["succeeded", "failed"]),
    "latest (flag)": ArtifactQuery(latest=True),
    "latest with a row filter": ArtifactQuery(latest=True, min_sqnr=30.0),
    "by size, first 10": ArtifactQuery(order_by="size_bytes", descending=False, limit=10),
    "scheme and sqnr": ArtifactQuery(schemes=["asymmetric"], min_sqnr=40.0),
    "one model, no limit": ArtifactQuery(models=[seedmod.MODELS[0]], limit=None),
    # every selected row shown (what --latest for given models reads)
    "latest of two models, no limit": ArtifactQuery(models=seedmod.MODELS[:2], latest=True,
                                                    limit=None),
    "latest with a row filter, no limit": ArtifactQuery(latest=True, min_sqnr=30.0,
                                                        limit=None),
    "batch and status, no limit": ArtifactQuery(batches=["weekly"], statuses=["succeeded"],
                                                limit=None),
}
EARLY_JOBS = 5


@pytest.fixture
def seeded(catalog_url):
    catalog = Catalog(catalog_url)
    with catalog.begin() as session:
        # Jobs without artifacts first, so that job ids and artifact ids differ: a record
        # that took its job's id for its own would not go unnoticed.
        early = Batch(name="early", labels={})
        session.add(early)
        session.flush()
        session.add_all([Job(batch=early, name=f"early-{i}", model_source="m", spec={},
                             idempotency_key=f"early-{i}", queue="cpu")
                         for i in range(EARLY_JOBS)])
        session.flush()
        records = seedmod.seed(session)
    yield catalog, records
    catalog.dispose()


@pytest.mark.parametrize("query", list(QUERIES.values()), ids=list(QUERIES))
def test_plain_rows_equal_the_orm_records(seeded, query, tmp_path):
    catalog, records = seeded
    with catalog.begin() as session:
        expected = [artifact_record(a, storage_root=tmp_path)
                    for a in list_artifacts(session, query, load_jobs=True)]
        got = artifact_records(session, query, storage_root=tmp_path)
    assert expected, "the query should select artifacts"
    assert [r["id"] for r in got] == seedmod.reference(records, query)
    assert got == expected
    assert [list(r) for r in got] == [list(r) for r in expected]  # same field order
    assert any(r["id"] != r["job_id"] for r in got)
    names = {r["job_id"]: r["job_name"] for r in got}
    assert all(name.startswith("job-") for name in names.values())


def test_locate_gives_path_and_uri(seeded):
    catalog, _ = seeded
    with catalog.begin() as session:
        got = artifact_records(session, ArtifactQuery(limit=3),
                               locate=lambda key: (f"/srv/a/{key}", f"file:///srv/a/{key}"))
    assert len(got) == 3
    for r in got:
        assert r["path"] == "/srv/a/" + r["storage_key"]
        assert r["uri"] == "file:///srv/a/" + r["storage_key"]


def test_no_match_is_an_empty_list(seeded):
    catalog, _ = seeded
    with catalog.begin() as session:
        assert artifact_records(session, ArtifactQuery(batches=["early"])) == []


KEYS = ["org/model@main/0fda.safetensors", "m/.hidden", "m/..x", ".a/b", "~u/x", "a%b/c#d?e",
        "é/ü.pt", "a/./b", "./a", "a//b", "a/", "a b/c", "b/a:c", "x/\u3000y", "a\tb"]
BAD_KEYS = ["a/../b", "..", ".", "/a", "a:b/c", "a\\b", "", " ", "a\x00b", "a/.."]


@pytest.mark.parametrize("folder", ["plain", "ünï cödé @#%"])
def test_listed_paths_and_uris_are_those_of_the_checked_key(tmp_path, folder):
    """The listing's path maker (a fast path for keys already canonical, ASCII quoted by a
    table) gives what the ORM record gives (``storage_key_path``) and what it computed
    before (``normalize_storage_key`` + ``quote_from_bytes``), and refuses the same keys."""
    import os
    from urllib.parse import quote_from_bytes

    from mono_quant.catalog.queries import _located, _path_maker
    from mono_quant.errors import BadInputError
    from mono_quant.io.store import normalize_storage_key

    root = tmp_path / folder
    root.mkdir()
    make = _path_maker(root)
    for key in KEYS:
        path = f"{root}/{normalize_storage_key(key)}"
        assert make(key) == (path, "file://" + quote_from_bytes(os.fsencode(path))), key
        assert make(key) == _located(key, root), key
    for key in BAD_KEYS:
        with pytest.raises(BadInputError):
            make(key)
        with pytest.raises(BadInputError):
            normalize_storage_key(key)


def test_plain_parts_is_the_canonical_key_check_for_safe_keys():
    """The path maker's fast check of a key of safe characters agrees with the canonical-key
    pattern on every key of up to 7 characters from ``a``, ``.``, ``/`` and ``@`` (empty
    parts, ``.`` and ``..`` parts, leading and trailing slashes)."""
    import itertools

    from mono_quant.catalog.queries import _CANONICAL_KEY, _SAFE_OR_AT, _plain_parts

    keys = ["".join(chars) for size in range(8) for chars in itertools.product("a./@", repeat=size)]
    assert all(_SAFE_OR_AT.fullmatch(key) for key in keys)
    differ = [key for key in keys if _plain_parts(key) != bool(_CANONICAL_KEY.fullmatch(key))]
    assert differ == []
    assert sum(map(_plain_parts, keys)) > 1000  # and both kinds occur


@pytest.mark.parametrize("micro, shown", [
    (0, "2024-01-02T03:04:05+00:00"),  # isoformat leaves out zero microseconds
    (5, "2024-01-02T03:04:05.000005+00:00"),
    (120000, "2024-01-02T03:04:05.120000+00:00"),
], ids=["whole second", "5 us", "120 ms"])
def test_record_times_are_the_aware_isoformat(seeded, micro, shown):
    """A record's time is the aware ISO text written here, as the ORM's record shows it."""
    from datetime import datetime, timezone

    from sqlalchemy import update

    from mono_quant.catalog import Artifact

    catalog, records = seeded
    stamp = datetime(2024, 1, 2, 3, 4, 5, micro, tzinfo=timezone.utc)
    first = records[0]["id"]
    with catalog.begin() as session:
        session.execute(update(Artifact).where(Artifact.id == first).values(created_at=stamp))
    got, orm = _records_and_orm(catalog)
    assert got[first]["created_at"] == shown == orm[first]["created_at"]
    assert got == orm


def _records_and_orm(catalog) -> tuple[dict, dict]:
    """Every artifact's record by id, from :func:`artifact_records` and from the ORM."""
    query = ArtifactQuery(limit=None)
    with catalog.begin() as session:
        got = {r["id"]: r for r in artifact_records(session, query)}
        orm = {a.id: artifact_record(a) for a in list_artifacts(session, query, load_jobs=True)}
    return got, orm


LATEST_QUERIES = {
    "latest of two models": ArtifactQuery(models=seedmod.MODELS[:2], latest=True, limit=None),
    "latest, first page": ArtifactQuery(latest=True, limit=3),
    "latest of one model by size": ArtifactQuery(models=seedmod.MODELS[:1], latest=True,
                                                 order_by="size_bytes", limit=None),
}


@pytest.mark.parametrize("query", list(LATEST_QUERIES.values()), ids=list(LATEST_QUERIES))
def test_latest_records_are_one_statement_with_their_jobs(seeded, query, tmp_path):
    """``--latest`` through the flag reads each record's job in the artifacts' statement
    (joined by the job's key): one statement, not a second one for the jobs, and the same
    records as the ORM's."""
    from sqlalchemy import event

    catalog, records = seeded
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    with catalog.begin() as session:
        expected = [artifact_record(a, storage_root=tmp_path)
                    for a in list_artifacts(session, query, load_jobs=True)]
        event.listen(catalog.engine, "before_cursor_execute", count)
        try:
            got = artifact_records(session, query, storage_root=tmp_path)
        finally:
            event.remove(catalog.engine, "before_cursor_execute", count)
    assert expected, "the query should select artifacts"
    assert got == expected
    assert [r["id"] for r in got] == seedmod.reference(records, query)
    # executed on the DBAPI cursor from the cached compiled text: nothing through
    # SQLAlchemy's execute, and that one text joins the jobs
    assert statements == []
    entry = queries._COMPILED[queries._compiled_key(catalog.engine.dialect, query)]
    assert entry is not None
    assert "JOIN jobs ON jobs.id = artifacts.job_id" in entry.sql


SORTED_HERE = {
    "newest first": ("created_at", True),
    "oldest first": ("created_at", False),
    "by size": ("size_bytes", True),
    "by id ascending": ("id", False),
}


@pytest.mark.parametrize("order_by, descending", list(SORTED_HERE.values()), ids=list(SORTED_HERE))
def test_latest_rows_sorted_here_as_the_database_sorts_them(seeded, order_by, descending,
                                                            tmp_path):
    """``--latest`` of given models without a limit returns its rows unsorted and sorts them
    in Python: the ORM's order (the database's ORDER BY), ties broken by id in the same
    direction, with times in and out of whole seconds; with a limit the database sorts."""
    from datetime import datetime, timezone

    from sqlalchemy import case, update

    from mono_quant.catalog import Artifact

    catalog, _ = seeded
    times = [datetime(2024, 1, 2, 3, 4, 5, micro, tzinfo=timezone.utc) for micro in (0, 5)]
    with catalog.begin() as session:  # ties in both sort columns
        session.execute(update(Artifact).values(
            created_at=case((Artifact.id % 3 == 0, times[0]), else_=times[1]),
            size_bytes=Artifact.id % 2))
    query = ArtifactQuery(models=seedmod.MODELS[:4], latest=True, limit=None,
                          order_by=order_by, descending=descending)
    with catalog.begin() as session:
        expected = [artifact_record(a, storage_root=tmp_path)
                    for a in list_artifacts(session, query, load_jobs=True)]
        got = artifact_records(session, query, storage_root=tmp_path)
    assert len(expected) > 3
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    assert got == expected
    entry = queries._COMPILED[queries._compiled_key(catalog.engine.dialect, query)]
    assert "ORDER BY" not in entry.sql
    paged = queries.records_statement(ArtifactQuery(latest=True, limit=5, order_by=order_by))
    assert paged._order_by_clauses


def test_latest_records_plan_reads_the_flag_index_and_each_job_by_key(catalog_url):
    """The plan of ``--latest`` for given models: the flagged rows through
    ``ix_artifacts_latest_flag``, then one lookup per job by its key (SQLite: the rowid;
    PostgreSQL: an index-only scan of ``ix_jobs_id_record``, as it plans at size, sequential
    and bitmap scans off on the test's small tables)."""
    from sqlalchemy import text

    from mono_quant.catalog.queries import records_statement

    catalog = Catalog(catalog_url)
    query = ArtifactQuery(models=seedmod.MODELS[:3], latest=True, limit=None)
    with catalog.engine.connect() as conn:
        sql = str(records_statement(query).compile(conn, compile_kwargs={"literal_binds": True}))
        if conn.dialect.name == "sqlite":
            plan = [r[3] for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql))]
            assert plan[:2] == [
                "SEARCH artifacts USING INDEX ix_artifacts_latest_flag (model_source=?)",
                "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"], plan
        else:
            for scan in ("seqscan", "bitmapscan"):
                conn.execute(text(f"SET enable_{scan} = off"))
            plan = "\n".join(conn.execute(text("EXPLAIN (COSTS OFF) " + sql)).scalars())
            assert "Index Scan using ix_artifacts_latest_flag on artifacts" in plan, plan
            assert "Index Only Scan using ix_jobs_id_record on jobs" in plan, plan
            assert "Seq Scan" not in plan, plan
    catalog.dispose()


@pytest.mark.parametrize("stored, shown", [
    ("2024-01-02 03:04:05.000000", "2024-01-02T03:04:05+00:00"),
    ("2024-01-02 03:04:05.000120", "2024-01-02T03:04:05.000120+00:00"),
    ("2024-01-02 03:04:05", "2024-01-02T03:04:05+00:00"),  # not SQLAlchemy's layout
    ("2024-01-02 03:04:05.5", "2024-01-02T03:04:05.500000+00:00"),
], ids=["layout, whole second", "layout, 120 us", "no fraction", "short fraction"])
def test_sqlite_time_text_shown_as_the_orm_shows_it(tmp_path, stored, shown):
    """SQLite's timestamp text, read as stored: sliced where it has SQLAlchemy's layout,
    parsed by SQLAlchemy otherwise (a row written by another tool); the ORM's text either way."""
    from sqlalchemy import text

    from mono_quant.catalog import upgrade

    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    catalog, records = seedmod.seeded_catalog(url)
    first = records[0]["id"]
    with catalog.begin() as session:
        session.execute(text("UPDATE artifacts SET created_at = :t WHERE id = :i"),
                        {"t": stored, "i": first})
    got, orm = _records_and_orm(catalog)
    assert got[first]["created_at"] == shown == orm[first]["created_at"]
    assert got == orm
    catalog.dispose()


def _typed(records: list[dict]) -> list[list[tuple[str, str, str]]]:
    """Records as (field, type, repr) in field order: 1 and True, or NaN and NaN, differ or
    match as they would in the JSON output."""
    return [[(k, type(v).__name__, repr(v)) for k, v in r.items()] for r in records]


#: ``--latest`` through the flag, read on the DBAPI cursor from a cached compiled text:
#: pairs of queries of one shape (the second reuses the first's text with other values).
RAW_SHAPES = {
    "models (IN)": [{"models": seedmod.MODELS[:2]}, {"models": seedmod.MODELS[3:5]}],
    "one model (=)": [{"models": seedmod.MODELS[:1]}, {"models": seedmod.MODELS[5:6]}],
    "schemes and formats, first page": [
        {"schemes": ["asymmetric"], "formats": ["safetensors", "pt"], "limit": 4},
        {"schemes": ["symmetric"], "formats": ["pt", "compressed-tensors"], "limit": 2}],
    "smoothquant, perplexity bound, by size ascending": [
        {"models": seedmod.MODELS[:3], "smoothquant": False, "max_perplexity_increase": 5.0,
         "order_by": "size_bytes", "descending": False},
        {"models": seedmod.MODELS[2:5], "smoothquant": False, "max_perplexity_increase": 0.5,
         "order_by": "size_bytes", "descending": False}],
    "by cosine (NULLs last), modes": [
        {"modes": ["static", "dynamic"], "order_by": "output_cosine", "limit": None},
        {"modes": ["dynamic", "static"], "order_by": "output_cosine", "limit": None}],
}


@pytest.mark.parametrize("shape", list(RAW_SHAPES.values()), ids=list(RAW_SHAPES))
def test_latest_raw_rows_equal_the_orm_records(seeded, shape, tmp_path):
    """The records read on the DBAPI cursor (no SQLAlchemy result layer) equal the ORM's,
    typed and in field order, for two parameter sets of one cached shape; NULLs, enums,
    times, booleans and infinities as the ORM shows them, on both databases."""
    from sqlalchemy import text

    catalog, records = seeded
    with catalog.begin() as session:  # the seed has none: some, and some NULL
        session.execute(text("UPDATE artifacts SET perplexity_increase = (id % 5) * 0.25 "
                             "WHERE id % 3 > 0"))
    nonempty = 0
    for fields in shape:
        query = ArtifactQuery(latest=True, **{"limit": None, **fields})
        with catalog.begin() as session:
            expected = [artifact_record(a, storage_root=tmp_path)
                        for a in list_artifacts(session, query, load_jobs=True)]
            got = artifact_records(session, query, storage_root=tmp_path)
        assert queries._COMPILED[queries._compiled_key(catalog.engine.dialect, query)]
        if query.max_perplexity_increase is None:  # the reference does not know it
            assert [r["id"] for r in got] == seedmod.reference(records, query)
        assert _typed(got) == _typed(expected)
        nonempty += bool(got)
    assert nonempty, "the shape should select artifacts"


@pytest.mark.parametrize("limit", [5, None], ids=["first 5", "all, sorted here"])
def test_latest_text_not_binding_the_values_in_order_is_not_used(seeded, monkeypatch, limit):
    """Where the compiled text does not bind :func:`_latest_values` in its order, the
    statement goes through SQLAlchemy (the same records, in the same order: sorted by the
    database, or here when it returns them all) and the shape is not cached."""
    catalog, _ = seeded
    query = ArtifactQuery(models=seedmod.MODELS[1:4], latest=True, limit=limit)
    monkeypatch.setattr(queries, "_latest_values", lambda q: [*reversed(q.models), q.limit])
    monkeypatch.setattr(queries, "_COMPILED", {})
    with catalog.begin() as session:
        got = artifact_records(session, query)
        expected = [artifact_record(a) for a in list_artifacts(session, query, load_jobs=True)]
    key = queries._compiled_key(catalog.engine.dialect, query)
    assert list(queries._COMPILED.items()) == [(key, None)]
    assert got and _typed(got) == _typed(expected)
