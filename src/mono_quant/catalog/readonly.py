"""Read-only engines: a catalog that whoever reads it (the web catalog) cannot change.

Read-only is enforced by the database, not by our code promising not to write:

* SQLite: the file is opened with a ``mode=ro`` URI, so any INSERT/UPDATE/DDL fails with
  "attempt to write a readonly database" (and ``PRAGMA query_only`` on top).
* PostgreSQL: every transaction is ``READ ONLY`` (``default_transaction_read_only=on`` for
  the connection), so a write fails with "cannot execute … in a read-only transaction".

Example:
    engine = read_only_engine("sqlite:////srv/mono-quant/catalog.db")
    with Session(engine) as session:
        list_artifacts(session)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mono_quant.catalog.db import SQLITE_BUSY_TIMEOUT_MS, make_engine, redact
from mono_quant.errors import BadConfigError

__all__ = ["read_only_engine"]


def _sqlite_read_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only = ON")
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def read_only_engine(url: str, **kwargs: Any) -> Engine:
    """An engine on an existing catalog through which nothing can be written.

    A SQLite catalog must exist (a read-only open never creates one): a missing file is a
    :class:`~mono_quant.errors.BadConfigError` naming it.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise BadConfigError(f"catalog URL {url!r} is not a SQLAlchemy URL") from e
    if parsed.get_backend_name() != "sqlite":
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args["options"] = "-c default_transaction_read_only=on"
        return make_engine(url, connect_args=connect_args, **kwargs)
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BadConfigError(
            f"catalog URL {redact(url)}: a read-only catalog needs a SQLite file path, "
            "e.g. 'sqlite:////srv/mono-quant/catalog.db'"
        )
    path = Path(database).expanduser().resolve()
    if not path.is_file():
        raise BadConfigError(
            f"catalog URL {redact(url)}: no catalog file at {path}; run a batch or "
            "`mono-quant db upgrade` first, or point --url at the catalog"
        )
    uri = f"sqlite:///file:{quote(str(path))}?mode=ro&uri=true"
    engine = create_engine(uri, **kwargs)
    event.listen(engine, "connect", _sqlite_read_only)
    return engine
