"""Catalog fixtures: the same tests on SQLite and on the real PostgreSQL server.

PostgreSQL: one database ``mq_test_<pid>_<random>`` per test session, upgraded once and
emptied (TRUNCATE … RESTART IDENTITY) before each test, dropped at the end; tests that need
an empty database get one of their own. If the server is unreachable the PostgreSQL cases
are skipped with the reason; SQLite cases always run.

Server: ``MONO_QUANT_TEST_PG_URL`` (an admin URL; default the local server, user postgres).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from mono_quant.catalog import upgrade

__all__ = ["BACKENDS", "backend", "catalog_url", "empty_url", "pg_database", "pg_server",
           "sqlite_path", "sqlite_snapshot"]

BACKENDS = ["sqlite", "postgresql"]
PG_ADMIN_URL = os.environ.get(
    "MONO_QUANT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TABLES = ("artifacts", "attempts", "jobs", "batches")


def _admin_conninfo() -> str:
    url = make_url(PG_ADMIN_URL)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of a reachable PostgreSQL server, or skip."""
    import psycopg

    try:
        with psycopg.connect(_admin_conninfo(), connect_timeout=3):
            pass
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL at {make_url(PG_ADMIN_URL).render_as_string()} "
                    f"is unreachable: {str(e).strip().splitlines()[0]}")
    return PG_ADMIN_URL


@contextmanager
def _temporary_database(tag: str = "") -> Iterator[str]:
    import psycopg

    name = f"mq_test_{os.getpid()}_{secrets.token_hex(4)}{tag}"
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database(pg_server) -> Iterator[str]:
    """A PostgreSQL catalog for this test session, at the head revision."""
    with _temporary_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def catalog_url(backend, request, tmp_path) -> str:
    """An upgraded, empty catalog on the backend under test."""
    if backend == "sqlite":
        return _upgraded_sqlite(tmp_path / "catalog.db")
    url = request.getfixturevalue("pg_database")
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    return url


#: The bytes of an upgraded, empty SQLite catalog, made once per process: the migrations
#: took a second or more per test on the shared machine (most of a catalog test's time, and
#: of each mutant's in a mutation run); each test then writes a copy into its tmp_path.
_UPGRADED: dict[str, bytes] = {}


def _upgraded_sqlite(path: Path) -> str:
    url = f"sqlite:///{path}"
    if "head" in _UPGRADED:
        path.write_bytes(_UPGRADED["head"])
        return url
    upgrade(url)  # disposes its engine: every connection closed
    snapshot = sqlite_snapshot(path)
    if snapshot is not None:
        _UPGRADED["head"] = snapshot
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None: another database)."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def sqlite_snapshot(path: Path) -> bytes | None:
    """The bytes of a SQLite file whose connections are all closed, or None where a
    write-ahead log is left beside it (the file alone would then miss its last writes)."""
    if path.with_name(path.name + "-wal").exists():
        return None
    return path.read_bytes()


@pytest.fixture
def empty_url(backend, request, tmp_path) -> Iterator[str]:
    """A database with nothing in it (a fresh PostgreSQL database, a new SQLite file)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'sub' / 'empty.db'}"
        return
    request.getfixturevalue("pg_server")
    with _temporary_database("_empty") as url:
        yield url
