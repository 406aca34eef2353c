"""Writing a submitted batch: the batch row, its jobs, and what already exists.

Example:
    with catalog.begin() as session:
        batch, ids = create_batch(session, rows, name="nightly")
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from sqlalchemy import ARRAY, String, any_, bindparam, func, or_, select, text
from sqlalchemy.orm import Session

from mono_quant.catalog.bulk import insert_rows
from mono_quant.catalog.models import Artifact, Batch, Job, JobStatus
from mono_quant.catalog.types import utcnow

__all__ = [
    "JobRow", "KeyList", "SerializedRows", "add_jobs", "chunks", "create_batch",
    "existing_artifacts", "id_filters", "id_runs", "jobs_in_flight", "pairs",
]

#: ids or keys per ``IN (...)`` list: well below SQLite's parameter limit.
CHUNK = 900


def pairs(rows: Iterable[Any]) -> dict[Any, Any]:
    """``{first column: second column}`` of two-column result rows."""
    return {row[0]: row[1] for row in rows}


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


#: ``BETWEEN`` terms per statement of :func:`id_filters`.
RUNS_PER_FILTER = 100


def id_runs(ids: Iterable[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Distinct ``ids`` as runs of consecutive values and the ids standing alone.

    >>> id_runs([7, 1, 2, 3, 9, 10, 5])
    ([(1, 3), (9, 10)], [5, 7])
    """
    runs: list[tuple[int, int]] = []
    alone: list[int] = []
    ordered = sorted(set(ids))
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            (runs.append((first, last)) if last > first else alone.append(first))
            start = i
    return runs, alone


def id_filters(column: Any, ids: Iterable[int]) -> Iterator[Any]:
    """Conditions that together select exactly the rows whose ``column`` is in ``ids``.

    A submit's or a batch's job ids come in runs (they are reserved together): each run is
    one ``BETWEEN`` (an index range scan, two parameters) instead of an ``IN`` list of
    thousands of bound values; the ids standing alone go in ``IN`` lists of :data:`CHUNK`.
    """
    runs, alone = id_runs(ids)
    for part in chunks(runs, RUNS_PER_FILTER):
        yield or_(*(column.between(first, last) for first, last in part))
    for chunk in chunks(alone):
        yield column.in_(chunk)


class JobRow(NamedTuple):
    """What ``create_batch`` needs to write one job. :func:`add_jobs` passes the rows to the
    insert as they are (a :class:`SerializedRows` holds plain tuples of these fields: a
    submit builds tens of thousands, and a tuple is built faster than a named one)."""

    name: str
    model_source: str
    model_source_json: dict[str, Any]
    spec: dict[str, Any]
    idempotency_key: str
    queue: str
    max_attempts: int


def create_batch(
    session: Session,
    rows: Sequence[JobRow] | SerializedRows,
    *,
    name: str,
    manifest_digest: str | None = None,
    requested_by: str | None = None,
    labels: dict[str, Any] | None = None,
) -> tuple[Batch, list[int]]:
    """Write a batch and its jobs (status ``pending``); returns the batch and the job ids.

    More jobs can be added to the batch in the same transaction with :func:`add_jobs` (a
    submit streams a big manifest through in chunks).
    """
    batch = Batch(name=name, manifest_digest=manifest_digest, requested_by=requested_by,
                  labels=labels or {})
    session.add(batch)
    session.flush()
    return batch, add_jobs(session, batch.id, rows)


class SerializedRows(list):  # type: ignore[type-arg]
    """Job rows (:class:`JobRow`'s fields in order, plain tuples) whose ``model_source_json``
    and ``spec`` are already their JSON text, as ``json.dumps`` writes it (a submit builds
    them from cached parts): :func:`add_jobs` stores those as they are. The list's type says
    so, so a text is never stored a second time as a JSON string."""

    __slots__ = ()


#: The job columns :func:`add_jobs` writes (the others keep their NULL defaults): a
#: :class:`JobRow`'s fields, then the values shared by the whole call.
_ROW_COLUMNS = JobRow._fields
#: The JSON columns of a :class:`JobRow`.
_JSON_COLUMNS = ("model_source_json", "spec")


def add_jobs(session: Session, batch_id: int, rows: Sequence[JobRow] | SerializedRows, *,
             queued: bool = False) -> list[int]:
    """Write ``rows`` as jobs of batch ``batch_id``; returns their ids in order.

    They are ``pending``, or with ``queued`` already ``queued`` (``queued_at`` = now): a
    submit that publishes right after its commit writes each row once in its final state
    instead of inserting it and then rewriting it (see
    :func:`mono_quant.catalog.jobs.unsend` for a publish that fails). Rows in a
    :class:`SerializedRows` give their JSON columns as text. Uses the database's bulk path
    (PostgreSQL ``COPY``, SQLite ``executemany``; see :mod:`mono_quant.catalog.bulk`) on
    the session's connection: same transaction.
    """
    now = utcnow()
    status = (JobStatus.QUEUED if queued else JobStatus.PENDING).value
    shared = {"batch_id": batch_id, "status": status, "attempts": 0, "created_at": now,
              "queued_at": now if queued else None}
    texts = _JSON_COLUMNS if isinstance(rows, SerializedRows) else ()
    return insert_rows(session, Job.__table__, _ROW_COLUMNS, rows, constants=shared,
                       texts=texts)


#: Keys per lookup in :func:`existing_artifacts` / :func:`jobs_in_flight`: one bound array
#: (PostgreSQL) or JSON list (SQLite) parameter, so a submit chunk is one query.
KEY_CHUNK = 10_000


class KeyList:
    """Idempotency keys sorted, without repeats, in chunks of :data:`KEY_CHUNK`, each chunk's
    bound value built once: a submit looks the same keys up twice (artifacts, live jobs).

    >>> KeyList(["b", "a", "b"]).chunks
    [['a', 'b']]
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self.chunks = [list(c) for c in chunks(sorted(set(keys)), KEY_CHUNK)]
        self._texts: list[str | None] = [None] * len(self.chunks)

    @classmethod
    def of(cls, keys: Iterable[str] | KeyList) -> KeyList:
        return keys if isinstance(keys, KeyList) else cls(keys)

    def conditions(self, session: Session, column: Any) -> Iterator[Any]:
        """``column IN chunk`` for each chunk, with ONE parameter: ``= ANY(:array)`` /
        ``IN json_each(:json)`` (an ``IN (…)`` of 10,000 bound values costs more to compile
        and bind than to run)."""
        pg = session.get_bind().dialect.name == "postgresql"
        for i, chunk in enumerate(self.chunks):
            if pg:
                yield column == any_(bindparam("keys", chunk, type_=ARRAY(String)))
                continue
            listed = text("SELECT value FROM json_each(:keys)").bindparams(keys=self._json(i))
            yield column.in_(listed.columns(value=String))

    def tables(self) -> Iterator[Any]:
        """Each chunk as the SQLite table ``json_each(:json)`` (column ``value``), to join."""
        for i in range(len(self.chunks)):
            yield func.json_each(bindparam("keys", self._json(i))).table_valued("value")

    def _json(self, i: int) -> str:
        if self._texts[i] is None:
            self._texts[i] = json.dumps(self.chunks[i])
        return self._texts[i]


def existing_artifacts(session: Session, keys: Iterable[str] | KeyList) -> dict[str, int]:
    """Idempotency key → artifact id, for the keys that already have an artifact.

    On SQLite the keys are the outer loop of a join, each probing the artifacts' unique key
    index: ``IN (SELECT value FROM json_each(…))`` first builds a temporary index of all
    10,000 keys (11 against 4 ms for a 10,000-job submit, measured)."""
    found: dict[str, int] = {}
    keys = KeyList.of(keys)
    if session.get_bind().dialect.name == "sqlite":
        for listed in keys.tables():
            found.update(pairs(session.execute(
                select(Artifact.idempotency_key, Artifact.id)
                .join_from(listed, Artifact, Artifact.idempotency_key == listed.c.value))))
        return found
    for condition in keys.conditions(session, Artifact.idempotency_key):
        found.update(pairs(session.execute(
            select(Artifact.idempotency_key, Artifact.id).where(condition))))
    return found


def jobs_in_flight(session: Session, keys: Iterable[str] | KeyList) -> dict[str, int]:
    """Idempotency key → id of a job not yet final (pending, queued, running) with that key.

    A second job for the same key would race the first for the same artifact; submit skips
    such keys even with ``--force``.
    """
    found: dict[str, int] = {}
    live = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING)
    for condition in KeyList.of(keys).conditions(session, Job.idempotency_key):
        found.update(pairs(session.execute(
            select(Job.idempotency_key, Job.id).where(condition, Job.status.in_(live)))))
    return found
