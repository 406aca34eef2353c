"""Safety of the web catalog: the token, read-only database access, a safe default address."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from starlette.testclient import TestClient

from mono_quant.catalog import Artifact, ArtifactQuery, Batch, Catalog
from mono_quant.catalog.readonly import read_only_engine
from mono_quant.errors import BadConfigError
from mono_quant.scheduler.cli import build_parser
from mono_quant.scheduler.web import create_app
from tests.catalog.seed import reference, seed
from tests.scheduler.web.conftest import serve


@pytest.fixture
def seeded(catalog_url):
    catalog = Catalog(catalog_url)
    with catalog.begin() as session:
        records = seed(session)
    catalog.dispose()
    return catalog_url, records


def _writes():
    return [
        insert(Batch).values(name="intruder", labels={}),
        update(Artifact).values(storage_key="elsewhere"),
        delete(Artifact),
        text("CREATE TABLE intruder (x INTEGER)"),
    ]


@pytest.mark.parametrize("n", range(4), ids=["insert", "update", "delete", "ddl"])
def test_writes_through_the_read_only_engine_fail(seeded, n):
    url, records = seeded
    engine = read_only_engine(url)
    try:
        with pytest.raises(DBAPIError, match="read-?only"), engine.begin() as conn:
            conn.execute(_writes()[n])
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Artifact)) == len(records)
            assert conn.scalar(select(func.count()).select_from(Batch)) == 3
    finally:
        engine.dispose()


def test_the_app_reads_through_a_read_only_engine(seeded, tmp_path):
    url, records = seeded
    app = create_app(url, storage_root=str(tmp_path))
    try:
        with pytest.raises(DBAPIError, match="read-?only"), app.state.engine.begin() as conn:
            conn.execute(delete(Artifact))
        client = TestClient(app)
        q = ArtifactQuery(schemes=["asymmetric"], min_sqnr=30, order_by="size_bytes",
                          descending=False, limit=None)
        got = client.get("/api/artifacts?scheme=asymmetric&min_sqnr=30"
                         "&order_by=size_bytes:asc&limit=1000").json()
        assert [a["id"] for a in got] == reference(records, q)
        q = ArtifactQuery(batches=["weekly"], statuses=["succeeded", "failed"], limit=None)
        got = client.get("/api/artifacts?batch=weekly&status=succeeded,failed&limit=1000").json()
        assert [a["id"] for a in got] == reference(records, q)
    finally:
        app.state.engine.dispose()


def test_a_missing_sqlite_catalog_is_not_created(tmp_path):
    missing = tmp_path / "nope" / "catalog.db"
    with pytest.raises(BadConfigError, match=f"no catalog file at {missing}"):
        read_only_engine(f"sqlite:///{missing}")
    assert not missing.parent.exists()
    out = subprocess.run([sys.executable, "-m", "mono_quant.scheduler.cli", "serve", "--url",
                          f"sqlite:///{missing}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"no catalog file at {missing}" in out.stderr


def test_serve_binds_to_loopback_by_default():
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.token is None


@pytest.mark.slow
def test_token_is_required_when_set(web_batch):
    with serve(web_batch, "--token", "s3cret-token") as base:
        assert httpx.get(base + "/api/batches").status_code == 401
        assert httpx.get(base + "/").status_code == 401
        wrong = {"Authorization": "Bearer s3cret-tokeN"}
        assert httpx.get(base + "/api/batches", headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret-token"}
        r = httpx.get(base + "/api/batches", headers=right)
        assert r.status_code == 200 and r.json()[0]["name"] == "web-tests"
        with httpx.Client(base_url=base) as browser:  # ?token= once, then the cookie
            assert browser.get("/?token=s3cret-token").status_code == 200
            assert browser.get("/artifacts").status_code == 200
        assert httpx.get(base + "/", cookies={"mq_token": "guess"}).status_code == 401


@pytest.mark.slow
def test_token_from_the_setting(web_batch):
    with serve(web_batch, env={"MONO_QUANT_SERVE_TOKEN": "from-env"}) as base:
        assert httpx.get(base + "/api/batches").status_code == 401
        headers = {"Authorization": "Bearer from-env"}
        assert httpx.get(base + "/api/batches", headers=headers).status_code == 200


def test_a_database_without_the_catalog_schema_is_refused(tmp_path):
    import sqlite3

    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    out = subprocess.run([sys.executable, "-m", "mono_quant.scheduler.cli", "serve", "--url",
                          f"sqlite:///{db}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "has no catalog schema; run `mono-quant db upgrade` first" in out.stderr
