"""Engines, sessions and schema upgrades for the catalog.

:func:`make_engine` knows the two backends: SQLite (the embedded default; foreign keys on,
WAL, a busy timeout, its folder created) and PostgreSQL (``postgresql+psycopg://``; a
connect timeout so an unreachable server fails fast). :func:`upgrade` runs the Alembic
migrations shipped in this package — no ``alembic.ini`` needed. :class:`Catalog` bundles an
engine with a session factory and turns "the database is not there" into a
:class:`~mono_quant.errors.TransientError` that names the URL (password hidden).

Example:
    >>> import tempfile, os
    >>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "sub", "catalog.db")
    >>> catalog = Catalog(url)
    >>> catalog.upgrade()[1] == head_revision()
    True
    >>> with catalog.begin() as session:
    ...     from mono_quant.catalog.models import Batch
    ...     session.add(Batch(name="nightly"))
    >>> catalog.dispose()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mono_quant.errors import BadConfigError, MonoQuantError, TransientError

__all__ = [
    "Catalog",
    "current_revision",
    "head_revision",
    "make_engine",
    "make_sessionmaker",
    "redact",
    "upgrade",
]

#: Seconds a PostgreSQL connection attempt may take before the catalog counts as unreachable.
CONNECT_TIMEOUT_S = 10
#: Milliseconds SQLite waits on a lock held by another process (a worker) before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000

_MIGRATIONS = "mono_quant.catalog:migrations"

_log = logging.getLogger(__name__)


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")  # readers do not block the writing worker
    cursor.execute("PRAGMA synchronous = NORMAL")  # durable with WAL except on power loss
    cursor.close()


def make_engine(url: str, *, create: bool = True, **kwargs: Any) -> Engine:
    """An engine for a catalog URL (SQLite or PostgreSQL), configured for the catalog.

    For a SQLite file the parent folder is created, unless ``create=False`` (read-only
    commands): then a missing SQLite file is a BadConfigError and nothing is created. Extra
    keyword arguments go to :func:`sqlalchemy.create_engine`.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise BadConfigError(
            f"catalog URL {url!r} is not a SQLAlchemy URL; expected e.g. "
            "'sqlite:////path/catalog.db' or 'postgresql+psycopg://user@host/db' "
            "(set MONO_QUANT_CATALOG_URL)"
        ) from e
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database).expanduser()
            if not create and not path.is_file():
                raise BadConfigError(
                    f"catalog database {path} does not exist (a read-only command creates "
                    "nothing); check --url / MONO_QUANT_CATALOG_URL, or create it with "
                    "`mono-quant db upgrade`"
                )
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
    elif backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # the driver we depend on
        connect_args = kwargs.pop("connect_args", {})
        connect_args.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        kwargs["connect_args"] = connect_args
        kwargs.setdefault("pool_pre_ping", True)
    else:
        raise BadConfigError(
            f"catalog URL {redact(url)}: backend {backend!r} is not supported; use SQLite "
            "('sqlite:///…') or PostgreSQL ('postgresql+psycopg://…')"
        )
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as e:
        raise BadConfigError(f"catalog URL {redact(url)}: {e}") from e
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (``expire_on_commit=False``)."""
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", _MIGRATIONS)
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this mono-quant."""
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    if head is None:  # pragma: no cover - the package ships migrations
        raise MonoQuantError("no catalog migrations found in mono_quant.catalog.migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never upgraded)."""
    from alembic.runtime.migration import MigrationContext

    with _connection_errors(engine), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> tuple[str | None, str]:
    """Create or upgrade the catalog schema; returns (revision before, revision after)."""
    from alembic import command

    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        before = current_revision(engine)
        with _connection_errors(engine), engine.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
        return before, current_revision(engine) or ""
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


@contextmanager
def _connection_errors(engine: Engine) -> Iterator[None]:
    """Turn driver-level failures (cannot connect, locked, server gone) into TransientError.

    Other database errors (integrity, programming) pass through unchanged: they are bugs or
    conflicts the caller handles.
    """
    try:
        yield
    except (OperationalError, InterfaceError) as e:
        where = f"catalog database {redact(str(engine.url))}"
        reason = _first_line(e.orig)
        if _is_connect_failure(e):
            raise TransientError(
                f"{where} is unreachable: {reason}; check that the server runs and "
                "MONO_QUANT_CATALOG_URL"
            ) from e
        raise TransientError(f"{where}: {reason}") from e


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_connect_failure(e: DBAPIError) -> bool:
    text = str(e.orig).lower()
    return e.connection_invalidated or any(
        s in text
        for s in (
            "connection refused", "could not connect", "connection failed", "timeout expired",
            "unable to open database", "could not translate host", "name or service not known",
            "server closed the connection", "password authentication",
        )
    ) or ("database" in text and "does not exist" in text)


class Catalog:
    """An engine plus a session factory for one catalog URL.

    Use :meth:`begin` for a transaction (committed on success, rolled back on error). Objects
    stay readable after the block. :meth:`require_schema` fails with a clear message when the
    database was never upgraded (or is newer than this mono-quant).
    """

    def __init__(self, url: str | None = None, *, engine: Engine | None = None,
                 create: bool = True) -> None:
        if engine is None:
            if url is None:
                from mono_quant.config import get_settings

                url = get_settings().catalog_url
            engine = make_engine(url, create=create)
        self.engine = engine
        self.url = str(engine.url)
        self.Session = make_sessionmaker(engine)
        self._checkpointing: threading.Thread | None = None
        self._checkpoint_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Catalog({redact(self.url)!r})"

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """``with catalog.begin() as session:`` — one transaction."""
        with _connection_errors(self.engine), self.Session.begin() as session:
            yield session

    @contextmanager
    def begin_bulk(self) -> Iterator[Session]:
        """:meth:`begin` for one big write. On SQLite the commit of a big transaction also
        copies the write-ahead log into the database file and syncs it (the automatic
        checkpoint: 40-50 ms of a 10,000-job submit's commit at load 3, 14 of them CPU, the
        rest waiting for the disk); here the commit leaves that to :meth:`checkpoint` (or
        :meth:`checkpoint_later`), which the caller runs when it suits it. Other databases:
        :meth:`begin`.
        """
        if self.engine.dialect.name != "sqlite":
            with self.begin() as session:
                yield session
            return
        with _connection_errors(self.engine), self.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
            conn.exec_driver_sql("PRAGMA wal_autocheckpoint = 0")
            conn.commit()
            try:
                with self.Session(bind=conn) as session, session.begin():
                    yield session
            finally:  # the pooled connection checkpoints again as before
                conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint = {int(pages)}")
                conn.commit()

    def checkpoint(self) -> None:
        """On SQLite, copy the write-ahead log into the database file without waiting for
        readers or writers (``PASSIVE``: what SQLite does after a commit once the log holds
        1,000 pages; see :meth:`begin_bulk`). Other databases: nothing."""
        if self.engine.dialect.name != "sqlite":
            return
        with _connection_errors(self.engine), self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()

    def checkpoint_later(self) -> None:
        """:meth:`checkpoint` on a thread of its own, so the caller goes on: what SQLite's
        documentation suggests for writers that should not wait for it ("disable the
        automatic checkpoint and run checkpoints in a separate thread", wal.html). After a
        10,000-job submit it takes 40-70 ms, most of it syncing the disk.

        A checkpoint still running is waited for first, so two never overlap. The thread
        is not a daemon: the interpreter lets it finish before the process exits (a CLI
        submit still ends with the log copied). :meth:`wait_checkpoint` and :meth:`dispose`
        wait for it. A failure is logged, not raised: the log stays as it is, and the next
        checkpoint (SQLite's automatic one after a commit) copies it. Other databases:
        nothing.
        """
        if self.engine.dialect.name != "sqlite":
            return
        with self._checkpoint_lock:
            self.wait_checkpoint()
            thread = threading.Thread(target=self._checkpoint_logged,
                                      name="mono-quant-checkpoint")
            thread.start()
            self._checkpointing = thread

    def wait_checkpoint(self) -> None:
        """Wait for the checkpoint :meth:`checkpoint_later` started, if one still runs."""
        thread = self._checkpointing
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _checkpoint_logged(self) -> None:
        try:
            self.checkpoint()
        except Exception as e:  # a thread of its own: nobody to raise to
            _log.warning("checkpoint of the catalog %s failed (SQLite copies the log at a "
                         "later commit): %s", redact(self.url), e)

    def upgrade(self, revision: str = "head") -> tuple[str | None, str]:
        """Create or upgrade the schema (see :func:`upgrade`)."""
        return upgrade(self.engine, revision)

    def require_schema(self) -> None:
        """Raise unless the database is at the migration this mono-quant ships."""
        current, head = current_revision(self.engine), head_revision()
        if current is None:
            raise MonoQuantError(
                f"catalog database {redact(self.url)} has no catalog schema; "
                "run `mono-quant db upgrade` first (`mono-quant where` shows which catalog "
                "this folder uses, and why)"
            )
        if current != head:
            raise MonoQuantError(
                f"catalog database {redact(self.url)} is at revision {current}, this mono-quant "
                f"expects {head}; run `mono-quant db upgrade` (or upgrade mono-quant if the "
                "database is newer)"
            )

    def dispose(self) -> None:
        """Close the pooled connections (after a checkpoint still running)."""
        self.wait_checkpoint()
        self.engine.dispose()
