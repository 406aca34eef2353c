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
    query = ArtifactQuery(limit=None)
    with catalog.begin() as session:
        got = {r["id"]: r for r in artifact_records(session, query)}
        orm = {a.id: artifact_record(a) for a in list_artifacts(session, query, load_jobs=True)}
    assert got[first]["created_at"] == shown == orm[first]["created_at"]
    assert got == orm
