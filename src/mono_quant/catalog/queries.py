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

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, selectinload, undefer

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
    if q.min_sqnr is not None:
        stmt = stmt.where(Artifact.weight_sqnr_db >= q.min_sqnr)
    if q.min_cosine is not None:
        stmt = stmt.where(Artifact.output_cosine >= q.min_cosine)
    if q.max_size is not None:
        stmt = stmt.where(Artifact.size_bytes <= q.max_size)
    if q.smoothquant is not None:
        column = Artifact.smoothquant_alpha
        stmt = stmt.where(column.is_not(None) if q.smoothquant else column.is_(None))
    if q.max_perplexity_increase is not None:
        stmt = stmt.where(Artifact.perplexity_increase <= q.max_perplexity_increase)
    if q.since is not None:
        stmt = stmt.where(Artifact.created_at >= q.since)
    return stmt


#: Filters that can differ within a (model, config, format) group. Without them (models,
#: schemes, granularities, modes and formats are constant within a group) --latest can use
#: the maintained flag (see mono_quant.catalog.latest).
_ROW_FILTERS = ("model_digests", "dtypes", "batches", "statuses", "min_sqnr", "min_cosine",
                "max_size", "since")


def _group_filters_only(q: ArtifactQuery) -> bool:
    return all(getattr(q, name) in ((), None) for name in _ROW_FILTERS)


def artifacts_statement(q: ArtifactQuery) -> Select[tuple[Artifact]]:
    """The SELECT that :func:`list_artifacts` runs (for EXPLAIN and for callers that page)."""
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
    column = getattr(Artifact, q.order_by)
    direction = (lambda c: c.desc()) if q.descending else (lambda c: c.asc())
    # NULLS LAST only where NULLs can occur: on a NOT NULL column it would stop PostgreSQL
    # from reading an index backwards for "newest first".
    key = direction(column)
    stmt = stmt.order_by(key.nulls_last() if column.nullable else key)
    if q.order_by != "id":
        stmt = stmt.order_by(direction(Artifact.id))
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    return stmt


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


def artifact_records(
    session: Session, q: ArtifactQuery | None = None, *,
    locate: Callable[[str], tuple[str, str]] | None = None,
    storage_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """The :func:`artifact_record` of each artifact ``q`` selects, read as plain rows.

    The same records, in the same order, as ``[artifact_record(a) for a in
    list_artifacts(session, q, load_jobs=True)]``, without building ORM objects (on a page
    of 100 artifacts that was most of the time spent: ``docs/performance.md``, web catalog):
    two statements, the artifacts' columns and then their jobs' three shown columns by id.
    The jobs are not joined into the first: where a filter selects many rows before the
    ORDER BY and LIMIT (a batch's 1,000 artifacts), the join would read all of their jobs
    rather than the 100 shown.

    ``locate`` maps a storage key to ``(path, uri)``; by default they are
    :func:`artifact_record`'s, under ``storage_root``.

    Example:
        records = artifact_records(session, ArtifactQuery(batches=[7]),
                                   locate=lambda key: (f"/srv/a/{key}", f"file:///srv/a/{key}"))
    """
    stmt = artifacts_statement(q or ArtifactQuery()).with_only_columns(
        *(getattr(Artifact, name).label(name) for name in _COLUMN_FIELDS))
    rows = session.execute(stmt).mappings().all()
    jobs: dict[int, dict[str, Any]] = {}
    if rows:
        for job_id, *shown in session.execute(
            select(Job.id, *_JOB_FIELDS.values())
            .where(Job.id.in_(sorted({row["job_id"] for row in rows})))
        ):
            jobs[job_id] = dict(zip(_JOB_FIELDS, shown, strict=True))
    where = locate or (lambda key: _located(key, storage_root))
    return [_record({**row, **jobs[row["job_id"]]}, *where(row["storage_key"]))
            for row in rows]
