"""``artifact_record``: the flat, JSON-ready row that ``mono-quant artifacts --json`` prints."""

from __future__ import annotations

import json

import pytest

from mono_quant.catalog import (
    ArtifactQuery,
    artifact_record,
    artifact_records,
    get_artifact,
)
from mono_quant.catalog.queries import RECORD_FIELDS
from tests.catalog import seed as seedmod


@pytest.fixture
def seeded(catalog_url):
    catalog, records = seedmod.seeded_catalog(catalog_url, n=3)
    yield catalog, records
    catalog.dispose()


def test_record_holds_every_field_as_plain_values(seeded):
    catalog, records = seeded
    r = records[1]
    with catalog.begin() as session:
        rec = artifact_record(get_artifact(session, r["id"]))
    # no info unless asked for; "observer" repeats weight_observer under its deprecated name
    assert list(rec) == [*RECORD_FIELDS, "observer"]
    expected = {
        "id": r["id"], "model_source": r["model_source"], "model_digest": r["model_digest"],
        "scheme": r["scheme"], "granularity": r["granularity"], "group_size": r["group_size"],
        "mode": r["mode"], "format": r["format"], "dtype": "int8",
        "weight_sqnr_db": r["weight_sqnr_db"], "weight_sqnr_db_min": r["weight_sqnr_db_min"],
        "output_cosine": r["output_cosine"], "size_bytes": r["size_bytes"],
        "compression_ratio": r["compression_ratio"], "batch_id": r["batch_id"],
        "job_status": r["job_status"], "sha256": r["sha256"],
        "created_at": r["created_at"].isoformat(),
    }
    assert {k: rec[k] for k in expected} == expected
    # str enums and datetimes come out as plain JSON values
    assert type(rec["format"]) is str and type(rec["job_status"]) is str
    assert type(rec["created_at"]) is str
    assert json.loads(json.dumps(rec))["created_at"] == r["created_at"].isoformat()


def test_record_with_info(seeded):
    catalog, records = seeded
    r = records[0]
    with catalog.begin() as session:
        rec = artifact_record(get_artifact(session, r["id"]), with_info=True)
    assert list(rec) == [*RECORD_FIELDS, "observer", "info"]
    assert rec["info"] == r["info"].to_dict()


def test_get_artifact_loads_info_and_job_for_use_after_the_session(seeded):
    catalog, records = seeded
    with catalog.begin() as session:
        artifact = get_artifact(session, records[2]["id"])
    # the session is closed: what was not loaded by get_artifact cannot be loaded now
    assert artifact.info == records[2]["info"].to_dict()
    assert artifact.job.batch_id == records[2]["batch_id"]


def test_plain_row_records_hold_plain_strings_not_enum_members(seeded):
    """``str(JobStatus.SUCCEEDED)`` is ``'JobStatus.SUCCEEDED'``: a CSV or text output of a
    record would show that if an enum member were left in it."""
    catalog, records = seeded
    with catalog.begin() as session:
        rows = artifact_records(session, ArtifactQuery(limit=None),
                                locate=lambda key: (key, key))
    assert [r["id"] for r in rows] and all(type(r[k]) is str for r in rows
                                           for k in ("job_status", "format", "created_at"))
    by_id = {r["id"]: r for r in records}
    assert [str(r["job_status"]) for r in rows] == [by_id[r["id"]]["job_status"] for r in rows]


def test_records_under_an_object_store_root_are_its_urls(seeded):
    """Computed from the key alone: no request is made (no server runs here)."""
    catalog, records = seeded
    with catalog.begin() as session:
        rows = artifact_records(session, ArtifactQuery(limit=None), storage_root="s3://bkt/root")
    assert len(rows) == len(records)
    assert [(r["path"], r["uri"]) for r in rows] == [
        (f"s3://bkt/root/{r['storage_key']}",) * 2 for r in rows]


@pytest.mark.parametrize(("root", "key", "expected"), [
    ("/", "a/b c.pt", ("/a/b c.pt", "file:///a/b%20c.pt")),
    ("/", "é/x", ("/é/x", "file:///%C3%A9/x")),
    ("/srv/root/", "a/./b", ("/srv/root/a/b", "file:///srv/root/a/b")),
    ("/srv/X", "a", ("/srv/X/a", "file:///srv/X/a")),
], ids=["filesystem-root", "filesystem-root-non-ascii", "trailing-slash", "ends-in-X"])
def test_listed_paths_under_a_root_ending_in_a_slash(root, key, expected):
    """The root's one trailing "/" is dropped before the key is joined: "/" itself gives
    "/a", not "//a" (the listing computes the path; nothing is read there)."""
    from mono_quant.catalog.queries import _path_maker

    assert _path_maker(root)(key) == expected


def test_record_under_an_object_store_root_is_its_url(seeded):
    """``artifact_record`` (the ORM path) locates like the listing: an object store's URL is
    both the path and the URI (a URL has no ``file://`` form)."""
    catalog, records = seeded
    with catalog.begin() as session:
        rec = artifact_record(get_artifact(session, records[0]["id"]),
                              storage_root="s3://bkt/root")
    url = f"s3://bkt/root/{rec['storage_key']}"
    assert (rec["path"], rec["uri"]) == (url, url)


def test_the_portable_path_maker_gives_what_the_posix_one_does(monkeypatch, tmp_path):
    """Off POSIX the listing builds paths with pathlib (``os.name`` faked here: there is no
    other host); on this host that portable branch must agree with the fast one."""
    import os
    from types import SimpleNamespace

    from mono_quant.catalog import queries

    keys = ["org/m@main/0fda.safetensors", "a b/c#d", "é/ü.pt", "a/./b"]
    fast = [queries._path_maker(tmp_path)(key) for key in keys]
    monkeypatch.setattr(queries, "os", SimpleNamespace(name="nt", fsencode=os.fsencode))
    portable = [queries._path_maker(tmp_path)(key) for key in keys]
    assert portable == fast
    assert fast[1] == (f"{tmp_path}/a b/c#d", f"{tmp_path.as_uri()}/a%20b/c%23d")
