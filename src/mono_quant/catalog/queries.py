"""Queries over the catalog, each a function taking a session.

Every list query is one SQL statement served by an index (see the indexes in
:mod:`mono_quant.catalog.models` and ``benchmarks/catalog_queries.py``); the large ``info``
JSON is deferred and only loaded by :func:`get_artifact`.

Example:
    with catalog.begin() as session:
        rows = list_artifacts(session, ArtifactQuery(models=["hf:org/m"], min_sqnr=40))
        counts = job_status_counts(session, batch_id=7)   # {JobStatus.SUCCEEDED: 12, ...}
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from datetime import timezone
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    ARRAY,
    Boolean,
    DateTime,
    Integer,
    Select,
    String,
    any_,
    bindparam,
    case,
    func,
    null,
    or_,
    select,
    text,
    type_coerce,
    union_all,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, selectinload, undefer
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from mono_quant.catalog.filters import ArtifactQuery
from mono_quant.catalog.models import Artifact, Batch, Job, JobStatus
from mono_quant.errors import BadInputError

__all__ = [
    "RECORD_FIELDS",
    "artifact_record",
    "artifact_records",
    "artifacts_statement",
    "get_artifact",
    "job_status_counts",
    "list_artifacts",
    "records_statement",
]

#: The fields of :func:`artifact_record`, in display order.
RECORD_FIELDS = (
    "id", "model_source", "model_digest", "scheme", "granularity", "group_size", "mode",
    "format", "dtype", "per_channel", "weight_observer", "activation_observer",
    "activation_scheme",
    "calibration_samples", "layers_quantized", "layers_total", "weight_sqnr_db",
    "weight_sqnr_db_min", "output_sqnr_db", "output_cosine", "size_bytes", "size_bytes_fp",
    "size_bytes_quant", "compression_ratio", "smoothquant_alpha", "weight_algorithm",
    "layers_excluded_for_accuracy", "perplexity_fp", "perplexity_quant", "perplexity_increase",
    "created_at", "job_id", "job_name", "batch_id",
    "job_status", "storage_key", "path", "uri", "sha256", "idempotency_key", "config_digest",
    "torch_version", "mono_quant_version", "safetensors_version", "python_version",
    "serveable_by", "serveable_reason", "low_compression",
)


def _filtered(q: ArtifactQuery) -> Select[Any]:
    """SELECT artifacts.id with every filter of ``q`` (AND across fields, IN within one)."""
    stmt = select(Artifact.id)
    columns = (
        (Artifact.model_source, q.models), (Artifact.model_digest, q.model_digests),
        (Artifact.scheme, q.schemes), (Artifact.granularity, q.granularities),
        (Artifact.mode, q.modes), (Artifact.format, q.formats), (Artifact.dtype, q.dtypes),
        (Artifact.serveable_by, q.serveable_by),
        (Artifact.weight_algorithm, q.weight_algorithms),
    )
    for column, values in columns:
        if len(values) == 1:  # "=" rather than "IN (x)": planners pick indexes more readily
            stmt = stmt.where(column == values[0])
        elif values:
            stmt = stmt.where(column.in_(values))
    if q.batches or q.statuses:
        stmt = stmt.join(Job, Job.id == Artifact.job_id)
        if q.statuses:
            stmt = stmt.where(Job.status.in_([JobStatus(s) for s in q.statuses]))
        if q.batches:
            ids = [b for b in q.batches if isinstance(b, int)]  # ArtifactQuery parsed them
            names = [b for b in q.batches if isinstance(b, str)]
            conds = []
            if ids:
                conds.append(Job.batch_id.in_([int(b) for b in ids]))
            if names:
                conds.append(Job.batch_id.in_(select(Batch.id).where(Batch.name.in_(names))))
            stmt = stmt.where(or_(*conds))
    if q.smoothquant is not None:
        column = Artifact.smoothquant_alpha
        stmt = stmt.where(column.is_not(None) if q.smoothquant else column.is_(None))
    return stmt.where(*_ranges(q).values())


def _ranges(q: ArtifactQuery) -> dict[str, ColumnElement[bool]]:
    """The range filters of ``q`` by the column each bounds (an index serves each)."""
    bounds = {
        "weight_sqnr_db": None if q.min_sqnr is None else Artifact.weight_sqnr_db >= q.min_sqnr,
        "output_cosine": None if q.min_cosine is None else Artifact.output_cosine >= q.min_cosine,
        "size_bytes": None if q.max_size is None else Artifact.size_bytes <= q.max_size,
        "perplexity_increase": None if q.max_perplexity_increase is None
        else Artifact.perplexity_increase <= q.max_perplexity_increase,
        "created_at": None if q.since is None else Artifact.created_at >= q.since,
    }
    return {column: bound for column, bound in bounds.items() if bound is not None}


#: Filters that can differ within a (model, config, format) group. Without them (models,
#: schemes, granularities, modes and formats are constant within a group) --latest can use
#: the maintained flag (see mono_quant.catalog.latest).
_ROW_FILTERS = ("model_digests", "dtypes", "batches", "statuses", "min_sqnr", "min_cosine",
                "max_size", "since")


def _group_filters_only(q: ArtifactQuery) -> bool:
    return all(getattr(q, name) in ((), None) for name in _ROW_FILTERS)


def artifacts_statement(q: ArtifactQuery) -> Select[tuple[Artifact]]:
    """The SELECT that :func:`list_artifacts` runs (for EXPLAIN and for callers that page)."""
    column = getattr(Artifact, q.order_by)
    if _probed(q):
        return _probed_page(q, column)
    selective = q.models or q.model_digests or q.batches  # a few rows: sorted as they are
    if column.nullable and q.limit is not None and not q.latest and not selective:
        return _page(q, column, _page_ids(q, column, False, q.limit, "present"))
    if q.latest and _group_filters_only(q):
        # Every filter is constant within a (model, config, format) group, so "newest of the
        # filtered rows" is the group's flagged row: read through the partial index.
        stmt = _filtered(q).with_only_columns(Artifact).where(Artifact.is_latest)
    elif q.latest:
        # Newest per (model, config, format) among the filtered rows: one window pass over
        # the rows the filters select, read in index order (ix_artifacts_latest).
        ranked = _filtered(q).add_columns(
            func.row_number()
            .over(
                partition_by=(Artifact.model_source, Artifact.config_digest, Artifact.format),
                order_by=(Artifact.created_at.desc(), Artifact.id.desc()),
            )
            .label("rank")
        ).subquery()
        stmt = select(Artifact).join(ranked, ranked.c.id == Artifact.id).where(ranked.c.rank == 1)
    elif q.batches or q.statuses:
        stmt = select(Artifact).where(Artifact.id.in_(_filtered(q)))
    else:
        # No join needed: filter the artifacts table directly so the planner can use its
        # indexes for the WHERE and the ORDER BY together.
        stmt = _filtered(q).with_only_columns(Artifact)
    direction = _direction(q)
    # NULLS LAST only where NULLs can occur: on a NOT NULL column it would stop PostgreSQL
    # from reading an index backwards for "newest first".
    key = direction(_NoIndexOrder(column) if _sort_filtered(q) else column)
    stmt = stmt.order_by(key.nulls_last() if column.nullable else key)
    if q.order_by != "id":
        stmt = stmt.order_by(direction(Artifact.id))
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    return stmt


def _direction(q: ArtifactQuery) -> Callable[[Any], Any]:
    return (lambda c: c.desc()) if q.descending else (lambda c: c.asc())


def _sort_filtered(q: ArtifactQuery) -> bool:
    """Whether SQLite should read the rows the filters select and sort them, rather than
    walk the sort column's index and skip the rows the filters reject.

    SQLite has no range or NULL statistics, so it guesses; on its own it walked a 50,000-row
    index for the 40 rows of one model, or a 2-day range. So the choice is made here: a
    filter an index serves and that selects few rows (models, digests, batches) is read
    first; a range on another column is probed (:func:`_probed_page`); equality on a column
    of a few values (scheme, mode, format, status, ...) keeps roughly one row in several, so
    the index walk stops early. ``created_at`` keeps SQLite's own choice (a newest-first
    walk, measured good for the filtered pages; see docs/performance.md). PostgreSQL plans
    from its statistics: this only adds a ``+`` on SQLite (:class:`_NoIndexOrder`).
    """
    if q.latest:
        return bool(q.models)  # a few rows per model through ix_artifacts_latest_flag
    if q.order_by in ("created_at", "id"):
        return False
    return bool(q.models or q.model_digests or q.batches or _other_ranges(q))


def _other_ranges(q: ArtifactQuery) -> list[ColumnElement[bool]]:
    return [bound for column, bound in _ranges(q).items() if column != q.order_by]


def _probed(q: ArtifactQuery) -> bool:
    return (not q.latest and q.limit is not None and q.order_by not in ("created_at", "id")
            and not (q.models or q.model_digests or q.batches) and bool(_other_ranges(q)))


#: A range that selects fewer rows than this many pages is read first and sorted (SQLite).
PROBE_PAGES = 30


def _probed_page(q: ArtifactQuery, column: Any) -> Select[tuple[Artifact]]:
    """A page filtered by a range on another column (``since``, ``min_sqnr``, ...) and
    sorted: on SQLite both plans in one statement, and a probe picks one. The probe counts
    the range's rows up to ``PROBE_PAGES`` pages (a bounded read of the range's index):
    fewer, and the range's rows are read and sorted; more, and the sort column's index is
    walked (it finds a page quickly when the range keeps many rows). The other plan gets
    ``LIMIT 0`` and is not read. SQLite cannot choose itself (no range statistics: it
    walked the index for a 1 % range, or sorted half the catalog for a wide one);
    PostgreSQL's planner chooses from its statistics, so there the probe is ``1 = 0`` and
    the walk variant is its plain statement.
    """
    assert q.limit is not None
    cap = q.limit * PROBE_PAGES
    in_range = select(Artifact.id).where(*_other_ranges(q)).limit(cap).subquery("probe")
    few = _OnSQLite(select(func.count()).select_from(in_range).scalar_subquery() < cap)
    sort_cap = case((few, q.limit), else_=0)
    ids = (_page_ids(q, column, True, sort_cap, "sorted")
           + _page_ids(q, column, False, q.limit - sort_cap, "walked"))
    return _page(q, column, ids)


def _page_ids(q: ArtifactQuery, column: Any, plain: bool, cap: Any, name: str) -> list[Any]:
    """SELECTs of the ids of the first ``cap`` rows (``cap`` may be an expression) in the
    page's order, without sorting where an index serves it; ``plain``: sort the filtered
    rows on SQLite (:func:`_sort_filtered`).

    On a nullable column, two steps through the column's ``(column, id)`` index: the first
    ``cap`` non-NULL rows in index order, then, only if they are fewer than ``cap``, the
    first NULL rows by id (the same index, its NULL range; ``LIMIT cap - count``, so
    neither database reads any when the page is full: a WHERE condition would not stop
    SQLite's scan). A plain ``ORDER BY column NULLS LAST`` cannot be read from one index in
    both directions: the index has its NULLs first on SQLite and last on PostgreSQL, so the
    database read and sorted every row the filters select (50,000 for a page of 100).
    """
    direction = _direction(q)
    key = _NoIndexOrder(column) if plain else column
    if not column.nullable:
        page = _filtered(q).order_by(direction(key), direction(Artifact.id)).limit(cap)
        return [select(page.subquery(name).c.id)]
    present = (_filtered(q).where(key.is_not(None))
               .order_by(direction(key), direction(Artifact.id)).limit(cap).cte(name))
    rest = cap - select(func.count()).select_from(present).scalar_subquery()
    missing = (_filtered(q).where(key.is_(None))
               .order_by(direction(_NoIndexOrder(Artifact.id) if plain else Artifact.id))
               .limit(rest).subquery(name + "_null"))
    return [select(present.c.id), select(missing.c.id)]


def _page(q: ArtifactQuery, column: Any, ids: list[Any]) -> Select[tuple[Artifact]]:
    """The artifacts of ``ids`` (at most a few pages of ids) in the page's order."""
    direction = _direction(q)
    # not read from the index: SQLite would walk it, probing each entry against the ids
    key = direction(_NoIndexOrder(column))
    return (select(Artifact).where(Artifact.id.in_(union_all(*ids)))
            .order_by(key.nulls_last() if column.nullable else key, direction(Artifact.id))
            .limit(q.limit))


class _OnSQLite(ColumnElement[bool]):
    """A condition as written on SQLite, and false elsewhere (``1 = 0``)."""

    inherit_cache = True
    _traverse_internals: ClassVar[list[Any]] = [("condition", InternalTraversal.dp_clauseelement)]
    type = Boolean()

    def __init__(self, condition: Any) -> None:
        self.condition = condition


@compiles(_OnSQLite)
def _false_elsewhere(element: _OnSQLite, compiler: Any, **kw: Any) -> str:
    return "1 = 0"


@compiles(_OnSQLite, "sqlite")
def _condition_on_sqlite(element: _OnSQLite, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.condition, **kw)


class _NoIndexOrder(ColumnElement[Any]):
    """A column as an ORDER BY term that SQLite cannot serve from an index (``+column``:
    SQLite's documented unary-plus no-op; the plain column elsewhere).

    ``--latest`` for given models reads a few rows per model through
    ``ix_artifacts_latest_flag`` and sorts them; SQLite, without range statistics, would
    rather walk all flagged rows in ``ix_artifacts_latest_newest`` to skip that small sort
    (60,000 rows at 1M artifacts).
    """

    inherit_cache = True
    _traverse_internals: ClassVar[list[Any]] = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: Any) -> None:
        self.column = column
        self.type = column.type


@compiles(_NoIndexOrder)
def _order_plain(element: _NoIndexOrder, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.column, **kw)


@compiles(_NoIndexOrder, "sqlite")
def _order_sqlite(element: _NoIndexOrder, compiler: Any, **kw: Any) -> str:
    return "+" + compiler.process(element.column, **kw)


def list_artifacts(
    session: Session, q: ArtifactQuery | None = None, *, load_jobs: bool = False
) -> list[Artifact]:
    """The artifacts matching ``q`` (default: the newest 100), without their ``info`` JSON.

    ``load_jobs`` also loads each artifact's job (one more query), e.g. for
    :func:`artifact_record` after the session is closed.
    """
    stmt = artifacts_statement(q or ArtifactQuery())
    if load_jobs:
        stmt = stmt.options(selectinload(Artifact.job))
    return list(session.scalars(stmt))


def get_artifact(session: Session, artifact_id: int) -> Artifact:
    """One artifact with its full ``info`` and its job; BadInputError if there is none."""
    artifact = session.scalars(
        select(Artifact)
        .where(Artifact.id == artifact_id)
        .options(undefer(Artifact.info), selectinload(Artifact.job))
    ).one_or_none()
    if artifact is None:
        raise BadInputError(f"no artifact with id {artifact_id} in the catalog")
    return artifact


def job_status_counts(session: Session, batch_id: int) -> dict[JobStatus, int]:
    """How many jobs of a batch are in each status (every status present, zeros included).

    One statement of one ``count(*)`` per status, each a range of the ``(batch_id, status,
    id)`` index: no sort and no grouping, whatever the planner believes about a batch
    written a moment ago (a ``GROUP BY`` over a fresh 100,000-job batch made PostgreSQL sort
    on disk, its statistics saying 100 rows).
    """
    per_status = [
        select(func.count()).select_from(Job)
        .where(Job.batch_id == batch_id, Job.status == status).scalar_subquery()
        for status in JobStatus
    ]
    row = session.execute(select(*per_status)).one()
    return dict(zip(JobStatus, row, strict=True))


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "value"):  # str enums
        return value.value
    return value


#: Record fields that are not artifact columns: from the job, or from the storage key.
_JOB_FIELDS = {"batch_id": Job.batch_id, "job_status": Job.status, "job_name": Job.name}
_COLUMN_FIELDS = tuple(f for f in RECORD_FIELDS
                       if f not in _JOB_FIELDS and f not in ("path", "uri"))


def _record(values: Mapping[str, Any], path: str, uri: str) -> dict[str, Any]:
    """The record of one artifact from its column and job values (an ORM object's
    attributes or a plain row's mapping: the same dict either way)."""
    located = {"path": path, "uri": uri}
    record = {name: located[name] if name in located else _plain(values[name])
              for name in RECORD_FIELDS}
    record["observer"] = record["weight_observer"]
    return record


def _located(storage_key: str, storage_root: str | Path | None) -> tuple[str, str]:
    from mono_quant.catalog.locate import storage_key_path

    path = storage_key_path(storage_key, storage_root)  # a str: an object store's URL
    return str(path), path if isinstance(path, str) else path.as_uri()


def artifact_record(artifact: Artifact, *, with_info: bool = False,
                    storage_root: str | Path | None = None) -> dict[str, Any]:
    """A flat dict of an artifact (JSON-ready apart from ±inf floats) for output.

    ``path`` is the artifact's absolute path under ``storage_root`` (default: the configured
    MONO_QUANT_STORAGE_ROOT) and ``uri`` its ``file://`` URI (both the object's URL on an
    object store). ``observer`` repeats
    ``weight_observer`` under its deprecated name (removed in a later release).
    """
    job = artifact.job
    values = {"batch_id": job.batch_id, "job_status": job.status, "job_name": job.name}
    values.update((name, getattr(artifact, name)) for name in _COLUMN_FIELDS)
    record = _record(values, *_located(artifact.storage_key, storage_root))
    if with_info:
        record["info"] = artifact.info
    return record


def _converter(column: Any) -> Any:
    """How a record shows this column's values as :func:`_as_read` reads them: the aware
    ISO text of a timestamp (:func:`_iso_time`); None where values pass as they are
    (decided once per column, not per value). Enums are read as their stored value."""
    kind = column.type
    if isinstance(kind, DateTime) or isinstance(getattr(kind, "impl", None), DateTime):
        return _iso_time
    return None


#: SQLAlchemy's text layout of a SQLite DATETIME (its default storage format), the layout
#: :class:`UTCDateTime` writes; anything else is parsed by SQLAlchemy's own processor.
_SQLITE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
_SQLITE_PARSE = sqlite.DATETIME().result_processor(sqlite.dialect(), None)


def _iso_time(value: Any) -> str | None:
    """``UTCDateTime``'s value of a stored timestamp as ``isoformat`` shows it: from
    PostgreSQL's aware datetime, or from SQLite's text, sliced where it has SQLAlchemy's
    layout (parsing it into a datetime and formatting it again cost ~3 us a value) and
    parsed otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        if _SQLITE_TIME.fullmatch(value):
            fraction = "" if value.endswith(".000000") else value[19:]
            return f"{value[:10]}T{value[11:19]}{fraction}+00:00"
        value = _SQLITE_PARSE(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc).isoformat()
    return value.astimezone(timezone.utc).isoformat()


def _path_maker(storage_root: str | Path | None) -> Callable[[str], tuple[str, str]]:
    """key -> (path, uri) as :func:`artifact_path` / :func:`artifact_uri` give them, with the
    root looked at once: paths are computed from the checked key, not resolved on disk (a
    listing never touches the storage; ``catalog verify`` and loading check where a path
    really leads)."""
    from urllib.parse import quote_from_bytes

    from mono_quant.catalog.locate import _root
    from mono_quant.io.store import is_store_url, normalize_storage_key, open_store

    root = _root(storage_root)
    if is_store_url(root):
        store = open_store(root)
        return lambda key: (store.url(key),) * 2
    base = str(Path(root).absolute()).rstrip("/")
    if os.name != "posix":  # pragma: no cover - the service runs on POSIX systems
        return lambda key: (str(p := Path(base) / normalize_storage_key(key)), p.as_uri())

    base_uri = "file://" + quote_from_bytes(os.fsencode(base + "/"))  # quoted byte by byte

    def make(key: str) -> tuple[str, str]:
        safe = _SAFE_OR_AT.fullmatch(key)
        if safe and _plain_parts(key):  # canonical, and quoted by one replace
            return f"{base}/{key}", base_uri + key.replace("@", "%40")
        if not _CANONICAL_KEY.fullmatch(key):  # else checked and canonical already
            key = normalize_storage_key(key)
            safe = _SAFE_OR_AT.fullmatch(key)
        if safe:  # what _QUOTED gives such a key, ~4x faster
            quoted = key.replace("@", "%40")
        elif key.isascii():
            quoted = key.translate(_QUOTED)
        else:
            quoted = quote_from_bytes(os.fsencode(key))
        return f"{base}/{key}", base_uri + quoted

    return make


#: ``quote_from_bytes`` of one ASCII character: itself where safe ("/" and the always safe
#: letters, digits and ``_.-~``), else ``%XX``; a ``str.translate`` table.
_QUOTED = {c: chr(c) if re.fullmatch(r"[A-Za-z0-9_.~/-]", chr(c)) else f"%{c:02X}"
           for c in range(128)}
#: Keys of safe characters and ``@`` (a hub model's ``name@revision``): quoted by replacing
#: ``@`` alone.
_SAFE_OR_AT = re.compile(r"[A-Za-z0-9_.~/@-]*")
def _plain_parts(key: str) -> bool:
    """For a key of :data:`_SAFE_OR_AT`'s characters (none of them ``\\``, ``:``, a space
    or NUL): what :data:`_CANONICAL_KEY` says, that its ``/``-separated parts are none of
    them empty, ``.`` or ``..``, in three substring tests (~4x faster than the regex)."""
    wrapped = f"/{key}/"
    return "//" not in wrapped and "/./" not in wrapped and "/../" not in wrapped


#: A storage key ``normalize_storage_key`` accepts and returns unchanged: relative parts
#: without ``/``, ``\``, ``:``, NUL or spaces, none of them ``.`` or ``..`` (or empty).
_KEY_PART = r"(?!\.\.?(?:/|$))[^/\\:\s\x00]+"
_CANONICAL_KEY = re.compile(f"{_KEY_PART}(?:/{_KEY_PART})*")


def records_statement(q: ArtifactQuery | None = None) -> Select[Any]:
    """:func:`artifacts_statement` with only the stored columns of a record (in
    :data:`RECORD_FIELDS` order), then ``job_id`` and ``storage_key``: the first of
    :func:`artifact_records`' statements. Where the statement reads only the rows it returns
    (``--latest`` through the flag: :func:`_jobs_joined`), it selects every record field in
    :data:`RECORD_FIELDS` order instead (:data:`_LATEST_COLUMNS`: the job's three joined by
    its primary key, ``path`` and ``uri`` NULL for the caller to fill), and there is no second
    statement; rows it returns whole are sorted by the caller (:func:`_sorted_here`)."""
    q = q or ArtifactQuery()
    if not _jobs_joined(q):
        return artifacts_statement(q).with_only_columns(*_RECORD_COLUMNS)
    stmt = artifacts_statement(q).with_only_columns(*_LATEST_COLUMNS).join_from(
        Artifact, Job, Job.id == Artifact.job_id)
    return stmt.order_by(None) if _sorted_here(q) else stmt


def _jobs_joined(q: ArtifactQuery) -> bool:
    """Whether :func:`records_statement` joins the jobs: for ``--latest`` read through the
    flag, whose rows are the records (all of them for given models, or the first page in
    ``ix_artifacts_latest_newest``'s order), so the join reads one job per record. Measured
    at 1M artifacts (SQLite): the join costs ~0.8 ms of SQLite's time for 300 rows, the
    second statement ~2.2 ms of CPU (docs/performance.md, issue 16, session 7). Elsewhere a
    filter may select many rows before the ORDER BY and LIMIT, and the jobs stay apart."""
    return q.latest and _group_filters_only(q)


#: Sort columns whose values order the same in Python as in both databases: NOT NULL times
#: (SQLite's timestamp text, compared as SQLite compares it, character by character;
#: PostgreSQL's aware datetimes) and integers (not text: PostgreSQL orders it by its
#: collation).
_SORTABLE_HERE = ("created_at", "id", "size_bytes")


def _sorted_here(q: ArtifactQuery) -> bool:
    """Whether ``--latest`` through the flag returns its rows unsorted, for
    :func:`_sort_rows` to sort: when it returns all of them (no limit), by a column of
    :data:`_SORTABLE_HERE`. The database's sort copied every record's ~50 columns into a
    sorter and out again; measured at 1M artifacts, 300 rows (docs/performance.md, issue 16,
    session 8): ~0.3 ms of SQLite's time, against ~0.05 ms for Python's sort of the rows."""
    return _jobs_joined(q) and q.limit is None and q.order_by in _SORTABLE_HERE


def _sort_rows(q: ArtifactQuery, rows: list[Any]) -> None:
    """Sort ``--latest`` rows (:data:`_LATEST_COLUMNS`, as read) as the statement's ORDER BY
    would: by ``q.order_by``, then id, both in ``q``'s direction (ids are unique, so the
    order is total)."""
    column = RECORD_FIELDS.index(q.order_by)
    key = itemgetter(column) if column == 0 else itemgetter(column, 0)
    rows.sort(key=key, reverse=q.descending)


def _converters(columns: Any) -> list[tuple[int, Any]]:
    return [(i, c) for i, c in enumerate(map(_converter, columns)) if c is not None]


def _job_fields(session: Session, job_ids: set[int]) -> dict[int, tuple[Any, ...]]:
    """The record fields of each job (batch id, status, name, in :data:`_JOB_FIELDS`
    order, as read: converted with the record) by id: one statement, the ids as one
    parameter."""
    stmt = select(Job.id, *_JOB_COLUMNS).where(_id_in(session, Job.id, job_ids))
    return {job_id: tuple(values)
            for job_id, *values in session.connection().execute(stmt).all()}


def _id_in(session: Session, column: Any, ids: set[int]) -> Any:
    """``column IN ids`` with ONE bound parameter (an ``IN`` of hundreds of values is
    expanded and bound one by one on every call): ``= ANY(:ids)`` / ``IN json_each(:ids)``."""
    ordered = sorted(ids)
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam("ids", ordered, type_=ARRAY(Integer)))
    listed = text("SELECT value FROM json_each(:ids)").bindparams(ids=json.dumps(ordered))
    return column.in_(listed.columns(value=Integer))


def _as_read(model: Any, name: str) -> Any:
    """The table column of attribute ``name`` as a record reads it: enum and timestamp
    columns as the driver returns them (an enum's stored value, ``_str_enum``; SQLite's
    timestamp text), converted once per value by :func:`_converter` rather than made into
    enum members and datetimes that :func:`_plain` would take apart again.

    Table columns (the same objects on every call), not the ORM's annotated attributes:
    the cached statement's result map already holds them, so SQLAlchemy matches them by
    identity when it adapts that map to a new statement, where an annotated copy is compared
    with ``==`` (building a SQL expression per column and call)."""
    column = model.__mapper__.columns[name]
    if _converter(column) is not None or isinstance(column.type, SAEnum):
        return type_coerce(column, String()).label(column.name)
    return column


def _read(model: Any, names: Any) -> tuple[tuple[Any, ...], list[tuple[int, Any]]]:
    """The columns of ``names`` as read (:func:`_as_read`) and their conversions."""
    columns = [model.__mapper__.columns[name] for name in names]
    return tuple(_as_read(model, name) for name in names), _converters(columns)


#: Where each record field comes from in ``(*columns, *job fields, path, uri)``: the stored
#: columns in :data:`_COLUMN_FIELDS` order (``job_id`` and ``storage_key`` last), then the
#: job's, then the located path and URI.
_SOURCES = (*_COLUMN_FIELDS, "_job_id", "_storage_key", *_JOB_FIELDS, "path", "uri")
_PICK = itemgetter(*(_SOURCES.index(name) for name in RECORD_FIELDS))
_OBSERVER = RECORD_FIELDS.index("weight_observer")
#: The stored record columns, then the job id and the storage key (records_statement), and
#: the job's record fields; each with the conversions of its values (decided once).
_RECORD_COLUMNS, _COLUMN_CONVERTERS = _read(Artifact, (*_COLUMN_FIELDS, "job_id", "storage_key"))
_JOB_COLUMNS, _JOB_CONVERTERS = _read(Job, [column.key for column in _JOB_FIELDS.values()])
#: The record fields converted (:func:`_converter`), by name; applied to each record.
_FIELD_CONVERTERS = (*((_COLUMN_FIELDS[i], c) for i, c in _COLUMN_CONVERTERS),
                     *((list(_JOB_FIELDS)[i], c) for i, c in _JOB_CONVERTERS))


#: The list filters of :func:`_filtered` that ``--latest`` through the flag may have, in
#: the order of their bound values in :func:`records_statement` (the row filters excluded).
_LATEST_LISTS = ("models", "schemes", "granularities", "modes", "formats", "serveable_by",
                 "weight_algorithms")


def _latest_shape(q: ArtifactQuery) -> tuple[Any, ...]:
    """What the SQL text of ``--latest`` through the flag depends on, apart from the
    values it binds (:func:`_latest_values`): one compiled text per shape."""
    return (*(len(getattr(q, name)) for name in _LATEST_LISTS), q.smoothquant,
            q.max_perplexity_increase is None, q.order_by, q.descending, q.limit is None)


def _latest_values(q: ArtifactQuery) -> list[Any]:
    """The values ``records_statement(q)`` binds, in the order of its SQL (checked against
    SQLAlchemy's own compilation once per shape: :func:`_compiled_latest`)."""
    values: list[Any] = [v for name in _LATEST_LISTS for v in getattr(q, name)]
    if q.max_perplexity_increase is not None:
        values.append(q.max_perplexity_increase)
    if q.limit is not None:
        values.append(q.limit)
    return values


class _Compiled:
    """The SQL text of one shape of the ``--latest`` records statement as SQLAlchemy
    compiles it for one dialect (IN lists expanded), how to bind a query's values to it,
    and the conversions of its result columns (filled at the first execution)."""

    def __init__(self, sql: str, names: list[str] | None, constants: list[Any]) -> None:
        self.sql, self.names, self.constants = sql, names, constants
        self.converters: list[tuple[str, Any]] | None = None

    def parameters(self, values: list[Any]) -> Any:
        values = [*values, *self.constants]
        return values if self.names is None else dict(zip(self.names, values, strict=True))


#: :class:`_Compiled` by :func:`_compiled_key`; at most _COMPILED_MAX.
_COMPILED: dict[tuple[Any, ...], _Compiled | None] = {}
_COMPILED_MAX = 512
_UNCOMPILED = object()


def _compiled_key(dialect: Any, q: ArtifactQuery) -> tuple[Any, ...]:
    """The key of ``q``'s text in :data:`_COMPILED`: the dialect's class (its driver) and
    parameter style, and the query's shape."""
    return (type(dialect), dialect.paramstyle, _latest_shape(q))


def _compiled_latest(dialect: Any, q: ArtifactQuery) -> _Compiled | None:
    """The :class:`_Compiled` of ``q``'s shape, compiled on first use; None where the
    compiled statement does not bind :func:`_latest_values` in that order (then the caller
    executes the statement through SQLAlchemy, as for every other query)."""
    key = _compiled_key(dialect, q)
    cached: Any = _COMPILED.get(key, _UNCOMPILED)  # one lookup: another thread may clear
    if cached is not _UNCOMPILED:
        return cached
    compiled = records_statement(q).compile(
        dialect=dialect, compile_kwargs={"render_postcompile": True})
    sql, bound = str(compiled), compiled.construct_params()
    if compiled.positiontup is not None:
        names, positional = None, list(compiled.positiontup)
    else:  # named (psycopg's pyformat): in the order they appear in the text
        names = positional = re.findall(r"%\((\w+)\)s", sql)
    values = _latest_values(q)
    ordered = [bound[name] for name in positional]
    ok = ordered[:len(values)] == values and len(set(positional)) == len(positional)
    entry = _Compiled(sql, names, ordered[len(values):]) if ok else None
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[key] = entry
    return entry


def _raw_rows(session: Session,
              q: ArtifactQuery) -> tuple[list[Any], list[tuple[str, Any]]] | None:
    """The rows of ``records_statement(q)`` for ``--latest`` through the flag, executed on
    the DBAPI cursor from its compiled text (:func:`_compiled_latest`): plain tuples, with
    the result processors SQLAlchemy would apply (SQLite's 0/1 booleans) and the record's
    conversions (:func:`_converter`), both decided once per shape. Measured at 1M
    (docs/performance.md, issue 16, session 7 (i16l2)): building, compiling-cache lookup
    and the Row objects of ``Connection.execute`` cost ~1.5-2 ms of CPU for 300 rows.
    Returns the rows and those conversions (by field name); None where the shape's text
    is not cached (:func:`_compiled_latest`)."""
    connection = session.connection()
    dialect = connection.dialect
    entry = _compiled_latest(dialect, q)
    if entry is None:
        return None
    # psycopg 3: the rows in PostgreSQL's binary format, decoded for ~0.4 ms less of CPU per
    # 300 rows than text (the same values and types: docs/performance.md)
    binary = {"binary": True} if dialect.driver == "psycopg" else {}
    cursor = connection.connection.cursor(**binary)
    try:
        cursor.execute(entry.sql, entry.parameters(_latest_values(q)))
        if entry.converters is None:
            entry.converters = _row_converters(dialect, cursor.description)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return rows, entry.converters


def _latest_column(name: str) -> Any:
    if name in _JOB_FIELDS:
        return _as_read(Job, _JOB_FIELDS[name].key)
    if name in ("path", "uri"):  # from the storage key, filled in by _latest_records
        return null().label(name)
    return _as_read(Artifact, name)


#: The columns of the ``--latest`` records statement: every record field in
#: :data:`RECORD_FIELDS` order (a row is zipped with the field names as it is), ``path``
#: and ``uri`` NULL placeholders that keep their place in the record.
_LATEST_COLUMNS = tuple(_latest_column(name) for name in RECORD_FIELDS)
_STORAGE_KEY = RECORD_FIELDS.index("storage_key")


def _row_converters(dialect: Any, description: Any) -> list[tuple[str, Any]]:
    """Per field of a ``--latest`` row (by name): SQLAlchemy's result processor for the
    column's type and the driver's type code, if any, then the record's conversion."""
    record = dict(_FIELD_CONVERTERS)
    converters = []
    for name, column, described in zip(RECORD_FIELDS, _LATEST_COLUMNS, description,
                                       strict=True):
        impl = column.type.dialect_impl(dialect)
        steps = [f for f in (impl.result_processor(dialect, described[1]), record.get(name))
                 if f]
        if len(steps) == 2:
            first, second = steps
            converters.append((name, lambda v, f=first, g=second: g(f(v))))
        elif steps:
            converters.append((name, steps[0]))
    return converters


def _latest_records(rows: list[Any], converters: list[tuple[str, Any]],
                    where: Callable[[str], tuple[str, str]]) -> list[dict[str, Any]]:
    """The records of ``--latest`` rows (:data:`_LATEST_COLUMNS`): each row zipped with the
    field names into its record (the fields already in order: no picking, no list per row),
    then its path and URI, the converted fields (a few: times, SQLite's booleans) and the
    deprecated ``observer`` last, as :func:`_record` adds it."""
    records = []
    for row in rows:
        # a row has one value per field by construction: no strict check per row
        record = dict(zip(RECORD_FIELDS, row, strict=False))
        record["path"], record["uri"] = where(row[_STORAGE_KEY])
        for name, convert in converters:
            record[name] = convert(record[name])
        record["observer"] = record["weight_observer"]
        records.append(record)
    return records


def artifact_records(
    session: Session, q: ArtifactQuery | None = None, *,
    locate: Callable[[str], tuple[str, str]] | None = None,
    storage_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """The :func:`artifact_record` of each artifact ``q`` selects, read as plain rows: what
    ``catalog list``, ``jobs`` and the web catalog's tables show.

    The same records, in the same order, as ``[artifact_record(a) for a in
    list_artifacts(session, q, load_jobs=True)]`` (tested on both databases), without
    building ORM objects (building ~50-attribute objects and their jobs cost more than the
    query: ``docs/performance.md``): the artifacts' columns (:func:`records_statement`) and
    their jobs' three shown columns, joined in for ``--latest`` through the flag (one job
    per record read: :func:`_jobs_joined`), else by id in a second statement (where a filter
    selects many rows before the ORDER BY and LIMIT, a batch's 1,000 artifacts, a join would
    read all of their jobs rather than the 100 shown). Values are read as stored and
    converted per column, decided once (:func:`_as_read`); each record is picked from its
    row in one C call (:data:`_PICK`), not built field by field. ``--latest`` through the
    flag is executed on the DBAPI cursor from its cached compiled text, below SQLAlchemy's
    result layer (:func:`_raw_rows`; the same records, tested on both databases).

    ``locate`` maps a storage key to ``(path, uri)``; by default they are computed from the
    key under ``storage_root`` without touching the storage (:func:`_path_maker`).

    Example:
        records = artifact_records(session, ArtifactQuery(batches=[7]),
                                   locate=lambda key: (f"/srv/a/{key}", f"file:///srv/a/{key}"))
    """
    q = q or ArtifactQuery()
    where = locate or _path_maker(storage_root)
    if _jobs_joined(q):
        raw = _raw_rows(session, q)
        rows, converters = raw if raw is not None else (
            session.connection().execute(records_statement(q)).all(), _FIELD_CONVERTERS)
        if _sorted_here(q):
            _sort_rows(q, rows)
        return _latest_records(rows, converters, where)
    rows = session.connection().execute(records_statement(q)).all()
    if not rows:
        return []
    key = len(_RECORD_COLUMNS) - 1  # the storage key; the job id just before it
    jobs = _job_fields(session, {row[key - 1] for row in rows})
    records = []
    for row in rows:
        record = dict(zip(RECORD_FIELDS, _PICK((*row, *jobs[row[key - 1]], *where(row[key]))),
                          strict=True))
        for name, convert in _FIELD_CONVERTERS:
            record[name] = convert(record[name])
        record["observer"] = record["weight_observer"]
        records.append(record)
    return records
