"""Catalog queries against a Python reference, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from mono_quant.catalog import (
    ArtifactQuery,
    Catalog,
    JobStatus,
    artifact_record,
    artifact_records,
    get_artifact,
    job_status_counts,
    list_artifacts,
    parse_since,
    parse_size,
)
from mono_quant.catalog import filters as catalog_filters
from mono_quant.errors import BadInputError
from tests.catalog import seed as seedmod

QUERIES = {
    "default": {},
    "everything": {"limit": None},
    "one-model": {"models": [seedmod.MODELS[0]], "limit": None},
    "two-models": {"models": seedmod.MODELS[1:3], "limit": None},
    "model-digest": {"model_digests": [seedmod._digest(seedmod.MODELS[2])], "limit": None},
    "scheme": {"schemes": ["asymmetric"], "limit": None},
    "schemes-or-and-granularity": {"schemes": ["symmetric", "asymmetric"],
                                   "granularities": ["per_group"], "limit": None},
    "static-min-cosine": {"modes": ["static"], "min_cosine": 0.98, "limit": None},
    "min-sqnr-keeps-inf": {"min_sqnr": 45.0, "limit": None},
    "scheme-min-sqnr": {"schemes": ["symmetric"], "min_sqnr": 30.0, "limit": 10},
    "max-size": {"max_size": 30_000_000, "limit": None},
    "since": {"since": seedmod.T0 + timedelta(days=20), "limit": None},
    "formats": {"formats": ["pt", "compressed-tensors"], "dtypes": ["int8"], "limit": None},
    "batch-id": {"batches": [2], "limit": None},
    "batch-names": {"batches": ["nightly", "adhoc"], "limit": None},
    "batch-id-or-name": {"batches": ["weekly", 3], "limit": None},
    "status": {"statuses": ["failed", "cancelled"], "limit": None},
    "latest": {"latest": True, "limit": None},
    "latest-filtered": {"latest": True, "schemes": ["symmetric"], "min_sqnr": 30.0,
                        "limit": None},
    "latest-few-models": {"latest": True, "models": seedmod.MODELS[:3], "limit": 7},
    "order-sqnr-asc": {"order_by": "weight_sqnr_db", "descending": False, "limit": None},
    "order-cosine-desc-nulls-last": {"order_by": "output_cosine", "limit": None},
    "order-cosine-asc-nulls-last": {"order_by": "output_cosine", "descending": False,
                                    "limit": None},
    "order-size-limit": {"order_by": "size_bytes", "limit": 5},
    # a page of a nullable column larger than its non-NULL rows: read in two steps
    "cosine-asc-page-past-the-nulls": {"order_by": "output_cosine", "descending": False,
                                       "limit": 60},
    "cosine-desc-page-past-the-nulls": {"order_by": "output_cosine", "limit": 60},
    "latest-by-cosine-page": {"latest": True, "order_by": "output_cosine", "limit": 10},
    "order-model": {"order_by": "model_source", "descending": False, "limit": 20},
    "order-id-asc": {"order_by": "id", "descending": False, "limit": 3},
    "serveable-by-vllm": {"serveable_by": ["vllm"], "limit": None},
    "serveable-by-others": {"serveable_by": ["mono-quant", "none"], "formats": ["pt",
                            "compressed-tensors"], "limit": None},
    "nothing-matches": {"models": ["hf:nobody/none"]},
}


@pytest.fixture
def seeded(catalog_url):
    catalog, records = seedmod.seeded_catalog(catalog_url)
    yield catalog, records
    catalog.dispose()


@pytest.mark.parametrize("name", list(QUERIES), ids=list(QUERIES))
def test_query_matches_python_reference(seeded, name):
    catalog, records = seeded
    query = ArtifactQuery(**QUERIES[name])
    expected = seedmod.reference(records, query)
    with catalog.begin() as session:
        got = [a.id for a in list_artifacts(session, query)]
    assert got == expected
    if name not in ("nothing-matches",):
        assert got, "the seed should give every query some rows"


@pytest.mark.parametrize("name", list(QUERIES), ids=list(QUERIES))
def test_plain_row_records_equal_the_orm_records(seeded, name, tmp_path):
    """``artifact_records`` (what ``catalog list`` prints: plain rows, no ORM objects)
    gives exactly the records the ORM path builds, in the same order."""
    catalog, records = seeded
    query = ArtifactQuery(**QUERIES[name])
    with catalog.begin() as session:
        orm = [artifact_record(a, storage_root=tmp_path)
               for a in list_artifacts(session, query, load_jobs=True)]
    with catalog.begin() as session:
        plain = artifact_records(session, query, storage_root=tmp_path)
    assert [list(r) for r in plain] == [list(r) for r in orm]  # same fields, same order
    assert plain == orm
    assert [r["id"] for r in plain] == seedmod.reference(records, query)


def test_seed_covers_the_edge_cases(seeded):
    _, records = seeded
    assert any(math.isinf(r["weight_sqnr_db"]) for r in records)
    assert any(r["output_cosine"] is None for r in records)
    assert len({r["created_at"] for r in records}) < len(records)  # timestamp ties
    groups = {(r["model_source"], r["config"], r["format"]) for r in records}
    assert len(groups) < len(records)  # --latest has something to drop


def test_typed_columns_and_info_round_trip(seeded):
    catalog, records = seeded
    by_id = {r["id"]: r for r in records}
    with catalog.begin() as session:
        for rid in (1, 14, 11, 27):  # 1, 14, 27: inf SQNR; 11: nan cosine (stored NULL)
            a = get_artifact(session, rid)
            r = by_id[rid]
            assert a.weight_sqnr_db == r["weight_sqnr_db"]
            assert a.weight_sqnr_db_min == r["weight_sqnr_db_min"]
            assert a.output_cosine == r["output_cosine"]
            assert a.created_at == r["created_at"] and a.created_at.tzinfo is not None
            assert (a.scheme, a.granularity, a.group_size, a.mode, a.format.value) == (
                r["scheme"], r["granularity"], r["group_size"], r["mode"], r["format"])
            assert a.info == r["info"].to_dict()
            assert type(r["info"]).from_dict(a.info).to_json() == r["info"].to_json()
            rec = artifact_record(a, with_info=True)
            assert rec["job_status"] == r["job_status"] and rec["batch_id"] == r["batch_id"]
            assert rec["serveable_by"] == r["serveable_by"]
            assert rec["serveable_reason"] == r["info"].metrics["serveable_reason"]
            assert rec["low_compression"] is r["low_compression"]
    assert math.isinf(by_id[1]["weight_sqnr_db"]) and by_id[11]["output_cosine"] is None


def test_list_does_not_load_info_or_jobs(seeded):
    from sqlalchemy import inspect

    catalog, _ = seeded
    with catalog.begin() as session:
        rows = list_artifacts(session, ArtifactQuery(limit=3))
        assert all("info" in inspect(a).unloaded for a in rows)
        assert all("job" in inspect(a).unloaded for a in rows)  # unless load_jobs=True
        loaded = list_artifacts(session, ArtifactQuery(limit=3), load_jobs=True)
        assert not any("job" in inspect(a).unloaded for a in loaded)


def test_job_status_counts(seeded, catalog_url):
    catalog, records = seeded
    with catalog.begin() as session:
        from mono_quant.catalog import Job

        # jobs without artifacts count too
        session.add_all(Job(batch_id=2, name=f"extra-{i}", model_source="m", spec={},
                            idempotency_key=f"{i:064x}", queue="gpu", status=s)
                        for i, s in enumerate([JobStatus.PENDING, JobStatus.QUEUED,
                                               JobStatus.QUEUED]))
    with catalog.begin() as session:
        counts = job_status_counts(session, 2)
    expected = dict.fromkeys(JobStatus, 0)
    for r in records:
        if r["batch_id"] == 2:
            expected[JobStatus(r["job_status"])] += 1
    expected[JobStatus.PENDING] += 1
    expected[JobStatus.QUEUED] += 2
    assert counts == expected
    with catalog.begin() as session:
        assert job_status_counts(session, 999) == dict.fromkeys(JobStatus, 0)


def test_get_missing_artifact_is_bad_input(catalog_url):
    catalog = Catalog(catalog_url)
    with pytest.raises(BadInputError, match="no artifact with id 42"), catalog.begin() as s:
        get_artifact(s, 42)
    catalog.dispose()


BAD = {
    "scheme": ({"schemes": ["weird"]}, "unknown scheme 'weird'; expected one of symmetric"),
    "granularity": ({"granularities": ["per_row"]}, "unknown granularity 'per_row'"),
    "mode": ({"modes": ["float8"]}, "unknown mode 'float8'; expected one of weight_only"),
    "format": ({"formats": ["gguf"]}, "unknown format 'gguf'"),
    "dtype": ({"dtypes": ["int4"]}, "unknown dtype 'int4'"),
    "status": ({"statuses": ["done"]}, "unknown status 'done'"),
    "order": ({"order_by": "info"}, "unknown order field 'info'"),
    "limit": ({"limit": 0}, "limit=0: expected a positive integer"),
    "nan": ({"min_sqnr": math.nan}, "min_sqnr=nan: expected a number"),
    "naive-since": ({"since": datetime(2024, 1, 1)}, "timezone-aware"),
    "max-size": ({"max_size": -1}, "max_size=-1"),
}


@pytest.mark.parametrize("name", list(BAD), ids=list(BAD))
def test_unknown_filter_values_are_bad_input(name):
    kwargs, message = BAD[name]
    with pytest.raises(BadInputError, match=message.replace("(", r"\(")):
        ArtifactQuery(**kwargs)


def test_filter_vocabularies_match_the_library():
    from mono_quant.catalog.models import ArtifactFormat
    from mono_quant.quant import qconfig, specs

    assert tuple(specs.SCHEMES) == catalog_filters.SCHEMES
    assert catalog_filters.GRANULARITIES == qconfig.GRANULARITIES
    assert catalog_filters.MODES == qconfig.MODES
    assert tuple(f.value for f in ArtifactFormat) == catalog_filters.FORMATS
    assert tuple(s.value for s in JobStatus) == catalog_filters.STATUSES


@pytest.mark.parametrize(
    ("text", "expected"),
    [("123", 123), ("10MB", 10_000_000), ("1.5GiB", 1.5 * 2**30), ("2 kib", 2048),
     ("7b", 7), ("3T", 3 * 10**12)],
    ids=["bytes", "MB", "GiB", "kib-space", "b", "T"],
)
def test_parse_size(text, expected):
    assert parse_size(text) == int(expected)


@pytest.mark.parametrize("text", ["", "ten", "5XB", "-3MB"], ids=["empty", "word", "unit", "neg"])
def test_parse_size_rejects(text):
    with pytest.raises(BadInputError, match="expected a number of bytes"):
        parse_size(text)


def test_parse_since():
    now = datetime(2024, 6, 1, 12, tzinfo=timezone.utc)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=timezone.utc)
    assert parse_since("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12,
                                                               tzinfo=timezone.utc)
    assert parse_since("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    with pytest.raises(BadInputError, match="expected an ISO date"):
        parse_since("yesterday")


def _newest_per_group(rows):
    newest = {}
    for r in rows:
        group = (r["model_source"], r["config"], r["format"])
        if group not in newest or (r["created_at"], r["id"]) > (newest[group]["created_at"],
                                                                newest[group]["id"]):
            newest[group] = r
    return newest.values()


def test_latest_with_every_row_filter_is_the_newest_row_that_passes(seeded):
    """With row filters (here all eight), ``--latest`` is the newest row of each group among
    the rows that pass, not the group's newest row if it passes: a threshold is chosen so
    that some group's newest row fails it while an older one passes."""
    catalog, records = seeded
    every = {"model_digests": sorted({r["model_digest"] for r in records} - {None}),
             "dtypes": ["int8"],
             "batches": sorted({r["batch_id"] for r in records} - {None}),
             "statuses": [s.value for s in JobStatus], "min_cosine": -1.0,
             "max_size": 10**15, "since": seedmod.T0 - timedelta(days=1)}
    for threshold in sorted({r["weight_sqnr_db"] for r in records}):
        query = ArtifactQuery(latest=True, limit=None, min_sqnr=threshold, **every)
        flagged = {r["id"] for r in _newest_per_group(records) if seedmod._matches(r, query)}
        if flagged != set(seedmod.reference(records, query)):
            break
    else:
        pytest.fail("the seed has no group whose newest row fails a threshold an older passes")
    with catalog.begin() as session:
        assert [a.id for a in list_artifacts(session, query)] == \
            seedmod.reference(records, query)
