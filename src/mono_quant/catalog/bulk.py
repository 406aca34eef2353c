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
timestamps), so the rows are byte for byte what the ORM would have written. Two shortcuts
keep the per-row Python work near the driver's own:

* ``constants``: columns with one value for every row (a batch id, a status, a timestamp),
  processed once and appended to each row by the driver-row zip instead of being repeated
  in the caller's rows;
* ``texts``: JSON columns whose values the caller gives as their serialised text, exactly as
  ``json.dumps`` (SQLAlchemy's serialiser) writes them (a submit builds each job spec's text
  from cached parts): written as they are, not serialised again.

When no per-row column needs a bind processor, each driver row is ``(id, *row, *constants)``
built in one pass: no transposing, no per-value calls.

Example:
    with catalog.begin() as session:
        ids = insert_rows(session, Job.__table__, ["name", "spec", ...], rows,
                          constants={"batch_id": 7, "status": "pending"}, texts={"spec"})
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from itertools import repeat
from typing import Any

from sqlalchemy import JSON, Table, insert, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

__all__ = ["SETTLE_MIN_ROWS", "insert_rows", "reserve_ids", "settle"]


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
    the one before it (a status or a timestamp shared by many rows) is processed once."""
    out, last, done = [], _UNSET, None
    for value in values:
        if value is not last:
            last, done = value, process(value)
        out.append(done)
    return out


_UNSET = object()


def _bound_rows(ids: Sequence[int], rows: Sequence[Sequence[Any]],
                active: list[tuple[int, Callable]], tail: tuple[Any, ...]
                ) -> list[tuple[Any, ...]]:
    """``(id, *row, *tail)`` tuples with each processed column's values bound (``active``:
    (index in the driver row, processor)), column by column: a Python call per row and
    column cost more than the driver's own insert. Without any, one pass over the rows."""
    if not active:
        return [(i, *row, *tail) for i, row in zip(ids, rows, strict=True)]
    columns: list[Sequence[Any]] = [ids, *zip(*rows, strict=True)]
    for i, process in active:
        columns[i] = _column(columns[i], process)
    return list(zip(*columns, *map(repeat, tail), strict=False))  # repeats are endless


def _plan(conn: Connection, table: Table, columns: Sequence[str],
          constants: Mapping[str, Any], texts: Collection[str],
          dumps: Callable | None = None) -> tuple[list[str], list[tuple[int, Callable]],
                                                   tuple[Any, ...]]:
    """The statement's columns (``id``, the per-row ones, the constants), the per-row
    columns' processors by driver-row index, and the constants' bound values. ``texts``
    columns go as they are; ``dumps``: the serialiser of the other JSON columns (COPY),
    else their bind processors."""
    full = ["id", *columns, *constants]
    procs = _processors(conn, table, full)
    if dumps is not None:
        procs = [dumps if isinstance(table.c[c].type, JSON) else p
                 for c, p in zip(full, procs, strict=True)]
    procs = [None if c in texts else p for c, p in zip(full, procs, strict=True)]
    width = 1 + len(columns)
    active = [(i, p) for i, p in enumerate(procs[:width]) if p is not None]
    tail = tuple(v if p is None else p(v)
                 for v, p in zip(constants.values(), procs[width:], strict=True))
    return full, active, tail


def _copy(conn: Connection, table: Table, columns: Sequence[str], ids: Sequence[int],
          rows: Sequence[Sequence[Any]], constants: Mapping[str, Any],
          texts: Collection[str]) -> None:
    # JSON goes as its text (COPY's text format parses it as jsonb); other columns through
    # their bind processors (UTC timestamps).
    dumps = conn.dialect._json_serializer or json.dumps  # what SQLAlchemy itself would use
    full, active, tail = _plan(conn, table, columns, constants, texts, dumps)
    raw = conn.connection.driver_connection
    sql = f"COPY {table.name} ({', '.join(full)}) FROM STDIN"
    with raw.cursor() as cur, cur.copy(sql) as copy:
        for row in _bound_rows(ids, rows, active, tail):
            copy.write_row(row)


def _executemany(conn: Connection, table: Table, columns: Sequence[str], ids: Sequence[int],
                 rows: Sequence[Sequence[Any]], constants: Mapping[str, Any],
                 texts: Collection[str]) -> None:
    full, active, tail = _plan(conn, table, columns, constants, texts)
    sql = f"INSERT INTO {table.name} ({', '.join(full)}) VALUES ({', '.join('?' * len(full))})"
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.executemany(sql, _bound_rows(ids, rows, active, tail))
    finally:
        cursor.close()


def insert_rows(session: Session, table: Table, columns: Sequence[str],
                rows: Sequence[Sequence[Any]], *, constants: Mapping[str, Any] | None = None,
                texts: Collection[str] = ()) -> list[int]:
    """Insert ``rows`` (values in ``columns`` order, without ``id``); returns their new ids.

    ``constants``: more columns, each with one value for every row. ``texts``: JSON columns
    (of ``columns`` or ``constants``) given as their serialised text, written as they are.
    The ids are in row order. Other backends than PostgreSQL and SQLite fall back to a Core
    ``executemany``.
    """
    if not rows:
        return []
    constants = constants or {}
    conn = session.connection()
    ids = reserve_ids(conn, table, len(rows))
    name = conn.dialect.name
    if name == "postgresql" and conn.dialect.driver == "psycopg":
        _copy(conn, table, columns, ids, rows, constants, texts)
    elif name == "sqlite" and conn.dialect.driver == "pysqlite":
        _executemany(conn, table, columns, ids, rows, constants, texts)
    else:  # the Core path serialises JSON itself
        full = ["id", *columns, *constants]
        loads = [json.loads if c in texts else None for c in full]
        plain = [[v if f is None else f(v) for f, v in zip(loads, (i, *r, *constants.values()),
                                                            strict=True)]
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
