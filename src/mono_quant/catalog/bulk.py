"""Writing many job rows at the speed each database offers, inside the caller's transaction.

An ORM (or Core) ``INSERT … RETURNING`` of 100,000 rows spends most of its time in Python:
binding 1.2 million parameters one by one and, on psycopg, rendering one huge statement.
Here the ids are reserved first, then the rows are streamed to the database with its bulk
path:

* PostgreSQL: ``COPY jobs (…) FROM STDIN`` through psycopg (ids from the table's sequence,
  one ``nextval`` per row in a single query, so concurrent submits never collide);
* SQLite: ``executemany`` on the driver's cursor; ids ``max(id) + 1 …`` — safe because the
  transaction already wrote (the batch row) and so holds SQLite's only write lock.

Both run on the session's own connection, so the rows commit or roll back with the rest of
the transaction. Values go through the columns' own bind processors (JSON serialiser, UTC
timestamps), so the rows are byte for byte what the ORM would have written. A JSON value
that is already the column serialiser's text (a :class:`JSONText`: a submit builds each job
spec's text from cached parts) is written as it is.

Example:
    with catalog.begin() as session:
        ids = insert_rows(session, Job.__table__, ["batch_id", "name", ...], rows)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import JSON, Table, insert, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

__all__ = ["SETTLE_MIN_ROWS", "JSONText", "insert_rows", "reserve_ids", "settle"]


class JSONText(str):
    """A JSON column's value given as its text, exactly as ``json.dumps`` (SQLAlchemy's
    serialiser) would write it: :func:`insert_rows` writes it without serialising again."""

    __slots__ = ()


def reserve_ids(conn: Connection, table: Table, n: int) -> list[int]:
    """``n`` fresh primary keys for ``table`` (ascending), in the current transaction."""
    if n == 0:
        return []
    if conn.dialect.name == "postgresql":
        seq = conn.scalar(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table.name})
        ids = conn.scalars(
            text("SELECT nextval(CAST(:seq AS regclass)) FROM generate_series(1, :n)"),
            {"seq": seq, "n": n},
        ).all()
        return sorted(ids)
    top = conn.scalar(text(f"SELECT coalesce(max(id), 0) FROM {table.name}"))
    return list(range(top + 1, top + n + 1))


def _processors(conn: Connection, table: Table, columns: Sequence[str]) -> list[Callable | None]:
    """Each column's bind processor for this dialect (None: the value goes as it is)."""
    dialect = conn.dialect
    out: list[Callable | None] = []
    for name in columns:
        out.append(table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
    return out


def _column(values: Sequence[Any], process: Callable) -> Sequence[Any]:
    """One column's values through its bind processor. A value that is the same object as
    the one before it (a batch id, a status, a timestamp shared by every row) is processed
    once; a :class:`JSONText` goes as its text."""
    first = values[0]
    if type(first) is not JSONText and all(v is first for v in values):
        return [process(first)] * len(values)  # one value for the whole column
    out, last, done = [], _UNSET, None
    for value in values:
        if type(value) is JSONText:
            out.append(str.__str__(value))
        else:
            if value is not last:
                last, done = value, process(value)
            out.append(done)
    return out


_UNSET = object()


def _bound_rows(ids: Sequence[int], rows: Sequence[Sequence[Any]],
                active: list[tuple[int, Callable]]) -> list[tuple[Any, ...]]:
    """``(id, *row)`` tuples with each processed column's values bound, column by column
    (a Python call per row and column cost more than the driver's own insert)."""
    columns: list[Sequence[Any]] = [ids, *zip(*rows, strict=True)]
    for i, process in active:
        columns[i] = _column(columns[i], process)
    return list(zip(*columns, strict=True))


def _copy(conn: Connection, table: Table, columns: Sequence[str], ids: Sequence[int],
          rows: Sequence[Sequence[Any]]) -> None:
    # JSON goes as its text (COPY's text format parses it as jsonb); other columns through
    # their bind processors (UTC timestamps).
    dumps = conn.dialect._json_serializer or json.dumps  # what SQLAlchemy itself would use
    procs = [dumps if isinstance(table.c[c].type, JSON) else p
             for c, p in zip(columns, _processors(conn, table, columns), strict=True)]
    active = [(i, p) for i, p in enumerate(procs) if p is not None]
    raw = conn.connection.driver_connection
    sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    with raw.cursor() as cur, cur.copy(sql) as copy:
        for row in _bound_rows(ids, rows, active):
            copy.write_row(row)


def _executemany(conn: Connection, table: Table, columns: Sequence[str], ids: Sequence[int],
                 rows: Sequence[Sequence[Any]]) -> None:
    procs = _processors(conn, table, columns)
    active = [(i, p) for i, p in enumerate(procs) if p is not None]
    sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
           f"VALUES ({', '.join('?' * len(columns))})")
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.executemany(sql, _bound_rows(ids, rows, active))
    finally:
        cursor.close()


def insert_rows(session: Session, table: Table, columns: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> list[int]:
    """Insert ``rows`` (values in ``columns`` order, without ``id``); returns their new ids.

    The ids are in row order. Other backends than PostgreSQL and SQLite fall back to a Core
    ``executemany``.
    """
    if not rows:
        return []
    conn = session.connection()
    ids = reserve_ids(conn, table, len(rows))
    full = ["id", *columns]
    name = conn.dialect.name
    if name == "postgresql" and conn.dialect.driver == "psycopg":
        _copy(conn, table, full, ids, rows)
    elif name == "sqlite" and conn.dialect.driver == "pysqlite":
        _executemany(conn, table, full, ids, rows)
    else:  # the Core path serialises JSON itself
        plain = [[i, *(json.loads(v) if type(v) is JSONText else v for v in r)]
                 for i, r in zip(ids, rows, strict=True)]
        conn.execute(insert(table), [dict(zip(full, r, strict=True)) for r in plain])
    return ids


#: Rows a bulk write must reach before :func:`settle` is worth its cost (a 10,000-job
#: batch's status counts visit 10,000 heap rows without it: ~15 ms).
SETTLE_MIN_ROWS = 10_000


def settle(engine: Engine, table: Table) -> None:
    """After a bulk write has committed: on PostgreSQL ``VACUUM (SKIP_LOCKED)`` the table,
    so the freshly written pages are marked all-visible and index-only scans (a batch's
    status counts over ``ix_jobs_batch_id_status_id``) stop visiting each new row in the
    heap: 100,000 heap fetches, 130-170 ms, right after a 100,000-job submit, 20-40 ms after
    (measured). It is what autovacuum does a minute later; VACUUM only reads the pages not
    yet all-visible, and SKIP_LOCKED skips it when another VACUUM holds the table. SQLite
    has no visibility map: nothing to do.
    """
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM (SKIP_LOCKED) {table.name}"))
