"""The catalog schema: batches, jobs, attempts and artifacts (SQLAlchemy 2.0 typed ORM).

One batch (a submitted manifest) has many jobs; a job has its attempts and, once it succeeded,
exactly one artifact. The artifact row carries the artifact's ``QuantizationInfo`` twice: as
typed, indexed columns (scheme, granularity, metrics, …) so people can query it, and as the
full JSON document so nothing is lost.

Constraints keep the catalog honest: an artifact cannot exist without its job
(``job_id NOT NULL`` + foreign key), there is one artifact per idempotency key (unique), the
enumerations are CHECK constraints, and storage keys are relative to the storage root.

Status changes belong to the functions that own the job state machine
(``mono_quant.catalog.jobs``); nothing else should assign ``Job.status``.

Example:
    >>> from mono_quant.catalog.models import Base, JobStatus
    >>> sorted(Base.metadata.tables)
    ['artifacts', 'attempts', 'batches', 'jobs']
    >>> JobStatus("queued") is JobStatus.QUEUED
    True
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, synonym

from mono_quant.catalog.types import JSONDocument, Metric, UTCDateTime, utcnow

__all__ = [
    "FINAL_STATUSES",
    "Artifact",
    "ArtifactFormat",
    "Attempt",
    "AttemptOutcome",
    "Base",
    "Batch",
    "ErrorKind",
    "Job",
    "JobStatus",
]


class JobStatus(str, Enum):
    """Where a job is: ``pending → queued → running → succeeded | failed``; ``cancelled``."""

    PENDING = "pending"  # written to the catalog, not yet handed to the broker
    QUEUED = "queued"  # a message is on the broker
    RUNNING = "running"  # a worker claimed it and heartbeats
    SUCCEEDED = "succeeded"  # its artifact row is committed
    FAILED = "failed"  # gave up (see error_kind / last_error)
    CANCELLED = "cancelled"  # cancelled by a user from any non-final state


#: Statuses a job never leaves.
FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class ErrorKind(str, Enum):
    """Why a job or an attempt failed; decides whether retrying can help."""

    BAD_INPUT = "bad_input"  # the model or data is wrong: do not retry
    BAD_CONFIG = "bad_config"  # the quantization config is wrong: do not retry
    TRANSIENT = "transient"  # broker, database, storage or OOM hiccup: retry with backoff
    POISON = "poison"  # crashed its worker max_attempts times: never redeliver
    INTERNAL = "internal"  # a bug in mono-quant
    CANCELLED = "cancelled"  # stopped because the user cancelled it


class AttemptOutcome(str, Enum):
    """How one attempt ended (NULL while it runs)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # raised; see error_kind / error
    CANCELLED = "cancelled"
    LOST = "lost"  # the worker vanished (heartbeat went stale, worker killed)


class ArtifactFormat(str, Enum):
    """On-disk layout of an artifact; compressed-tensors artifacts are folders."""

    SAFETENSORS = "safetensors"
    PT = "pt"
    COMPRESSED_TENSORS = "compressed-tensors"


def _str_enum(enum: type[Enum], name: str) -> SAEnum:
    # VARCHAR + a named CHECK constraint (no native PostgreSQL ENUM type: adding a value later
    # is then an ordinary migration); the column stores and returns the enum's values.
    return SAEnum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


# Reusable column aliases (SQLAlchemy 2.0 "Annotated" style).
IntPK = Annotated[int, mapped_column(Integer, primary_key=True, autoincrement=True)]
Digest = Annotated[str, mapped_column(String(64))]  # sha256 hex
Timestamp = Annotated[datetime, mapped_column(UTCDateTime())]
Name = Annotated[str, mapped_column(String(255))]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with constraint names that migrations can refer to."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONDocument}  # noqa: RUF012


class Batch(Base):
    """One submitted manifest."""

    __tablename__ = "batches"

    id: Mapped[IntPK]
    name: Mapped[Name]
    submitted_at: Mapped[Timestamp] = mapped_column(default=utcnow)
    #: sha256 of the manifest as submitted (to recognise a re-submission).
    manifest_digest: Mapped[Digest | None]
    requested_by: Mapped[Name | None]
    #: Free-form user labels, e.g. {"team": "search", "ticket": "Q-12"}.
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)

    jobs: Mapped[list[Job]] = relationship(back_populates="batch")


class Job(Base):
    """One model × one config: the unit a worker claims."""

    __tablename__ = "jobs"
    __table_args__ = (
        # a batch's status counts (index-only), and its jobs of a status in id order (pages)
        Index(None, "batch_id", "status", "id"),
        # a batch's jobs in id order, a page at a time (migration 0006)
        Index(None, "batch_id", "id"),
        Index(None, "status", "queue"),  # claim / reconcile scans
        Index(None, "idempotency_key"),  # not unique: retries and --force may repeat a key
    )

    id: Mapped[IntPK]
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    name: Mapped[Name]
    #: Canonical model source string, e.g. "hf:org/model@rev" or "file:models/mlp.pt".
    model_source: Mapped[str] = mapped_column(Text)
    #: The model source as structured JSON (kind, path, revision, …).
    model_source_json: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: The job's typed contract: ``JobSpec.to_payload()`` (model, quantization config,
    #: format, calibration, samples, stream), decoded by ``JobSpec.from_payload``.
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: sha256 hex of the spec (``JobSpec.idempotency_key``).
    idempotency_key: Mapped[Digest]
    #: Device class = Celery queue: "gpu", "gpu.h100", "cpu", …
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[JobStatus] = mapped_column(
        _str_enum(JobStatus, "job_status"), default=JobStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    last_error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[ErrorKind | None] = mapped_column(_str_enum(ErrorKind, "job_error_kind"))
    #: Node name of the worker that holds (or last held) the job.
    worker: Mapped[Name | None]
    #: "cuda:0", "cpu", …
    device: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[Timestamp | None]
    #: e.g. {"stage": "calibrating", "step": 3, "total": 8}
    progress: Mapped[dict[str, Any] | None]
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow)
    queued_at: Mapped[Timestamp | None]
    started_at: Mapped[Timestamp | None]
    finished_at: Mapped[Timestamp | None]
    celery_task_id: Mapped[str | None] = mapped_column(String(255))

    batch: Mapped[Batch] = relationship(back_populates="jobs")
    attempt_rows: Mapped[list[Attempt]] = relationship(
        back_populates="job", order_by="Attempt.number"
    )
    artifact: Mapped[Artifact | None] = relationship(back_populates="job")


class Attempt(Base):
    """One try at a job by one worker."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: Mapped[IntPK]
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    #: 1 for the first attempt.
    number: Mapped[int]
    worker: Mapped[Name | None]
    device: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[Timestamp] = mapped_column(default=utcnow)
    finished_at: Mapped[Timestamp | None]
    outcome: Mapped[AttemptOutcome | None] = mapped_column(
        _str_enum(AttemptOutcome, "attempt_outcome")
    )
    error_kind: Mapped[ErrorKind | None] = mapped_column(
        _str_enum(ErrorKind, "attempt_error_kind")
    )
    error: Mapped[str | None] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="attempt_rows")


#: The artifact columns a listing can be sorted by that have a ``(column, id)`` index (the
#: others: ``id``, the primary key; ``model_source``, served by its ``created_at`` index).
ORDER_COLUMNS = (
    "created_at", "size_bytes", "weight_sqnr_db", "weight_sqnr_db_min",
    "output_sqnr_db", "output_cosine", "compression_ratio", "perplexity_increase",
    "perplexity_quant",
)


class Artifact(Base):
    """A quantized model in storage, with its QuantizationInfo as typed columns."""

    __tablename__ = "artifacts"
    __table_args__ = (
        Index(None, "model_source", "created_at"),  # all artifacts of a model, newest first
        Index(None, "model_digest"),
        Index(None, "scheme", "weight_sqnr_db"),
        # one (column, id) index per sortable column (ORDER_FIELDS in catalog.filters; id is
        # the primary key): a sorted page is read in order, ties by id (migration 0008)
        *(Index(None, column, "id") for column in ORDER_COLUMNS),
    )

    id: Mapped[IntPK]
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    #: The job's idempotency key: one artifact per key.
    idempotency_key: Mapped[Digest] = mapped_column(unique=True)
    #: The job's canonical model source (copied so "all artifacts of this model" needs no join).
    model_source: Mapped[str] = mapped_column(Text)
    #: Content digest of the float weights, where the worker could compute it cheaply.
    model_digest: Mapped[Digest | None]
    #: sha256 of the canonical QuantConfig JSON (what --latest groups by, with model and format).
    config_digest: Mapped[Digest]
    #: POSIX path relative to the storage root (never absolute, never "..").
    storage_key: Mapped[str] = mapped_column(Text, unique=True)
    format: Mapped[ArtifactFormat] = mapped_column(_str_enum(ArtifactFormat, "artifact_format"))
    #: mono_quant.io.hashing.sha256_path / size_path of the file or folder.
    sha256: Mapped[Digest]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow)
    #: The newest artifact of its (model, config, format) group, by (created_at, id); kept
    #: by mono_quant.catalog.latest, read by --latest through ix_artifacts_latest_flag.
    is_latest: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    # QuantizationInfo, typed.
    dtype: Mapped[str] = mapped_column(String(16))
    scheme: Mapped[str] = mapped_column(String(16))
    granularity: Mapped[str] = mapped_column(String(16))
    group_size: Mapped[int | None]
    mode: Mapped[str] = mapped_column(String(16))
    per_channel: Mapped[bool] = mapped_column(Boolean)
    #: The weight observer (column "observer": renamed in the API only, no migration).
    weight_observer: Mapped[str] = mapped_column("observer", String(32))
    #: Deprecated spelling of ``weight_observer``.
    observer: Mapped[str] = synonym("weight_observer")
    activation_observer: Mapped[str | None] = mapped_column(String(32))
    activation_scheme: Mapped[str | None] = mapped_column(String(16))
    calibration_samples: Mapped[int]
    layers_quantized: Mapped[int | None]
    layers_total: Mapped[int | None]
    weight_sqnr_db: Mapped[float | None] = mapped_column(Metric())
    weight_sqnr_db_min: Mapped[float | None] = mapped_column(Metric())
    output_sqnr_db: Mapped[float | None] = mapped_column(Metric())
    output_cosine: Mapped[float | None] = mapped_column(Metric())
    size_bytes_fp: Mapped[int | None] = mapped_column(BigInteger)
    size_bytes_quant: Mapped[int | None] = mapped_column(BigInteger)
    compression_ratio: Mapped[float | None] = mapped_column(Metric())
    # LLM-grade int8 (migration 0005); ``mode`` says static or dynamic activations.
    #: SmoothQuant alpha, NULL when SmoothQuant was off.
    smoothquant_alpha: Mapped[float | None] = mapped_column(Metric())
    #: "rtn" or "gptq" (NULL for artifacts recorded before the column existed).
    weight_algorithm: Mapped[str | None] = mapped_column(String(16))
    #: Layers kept in float to meet an accuracy target (their names are in ``info``).
    layers_excluded_for_accuracy: Mapped[int | None]
    perplexity_fp: Mapped[float | None] = mapped_column(Metric())
    perplexity_quant: Mapped[float | None] = mapped_column(Metric())
    #: perplexity_quant - perplexity_fp on the evaluation text.
    perplexity_increase: Mapped[float | None] = mapped_column(Metric())
    torch_version: Mapped[str | None] = mapped_column(String(64))
    mono_quant_version: Mapped[str | None] = mapped_column(String(64))
    safetensors_version: Mapped[str | None] = mapped_column(String(64))
    python_version: Mapped[str | None] = mapped_column(String(64))
    #: Who serves it: "vllm", "mono-quant" (load_quantized) or "none"; and why (io.serveability).
    serveable_by: Mapped[str | None] = mapped_column(String(16), index=True)
    serveable_reason: Mapped[str | None] = mapped_column(Text)
    #: compression_ratio below quant.quantize.LOW_COMPRESSION (a warning of the job's result).
    low_compression: Mapped[bool | None] = mapped_column(Boolean)
    #: The full QuantizationInfo.to_dict() (non-finite floats as {"__float__": "inf"}).
    #: Deferred: list queries do not need it, and it can be large (per-layer metrics).
    info: Mapped[dict[str, Any]] = mapped_column(deferred=True)

    job: Mapped[Job] = relationship(back_populates="artifact")


# --latest: newest per (model, config, format). In the window's own order (newest first, id
# breaking ties) so it is read straight from the index, without a sort or a table access.
Index(
    "ix_artifacts_latest",
    Artifact.model_source,
    Artifact.config_digest,
    Artifact.format,
    Artifact.created_at.desc(),
    Artifact.id.desc(),
)
# The maintained flag: one row per group (unique), only flagged rows indexed (partial).
Index(
    "ix_artifacts_latest_flag",
    Artifact.model_source,
    Artifact.config_digest,
    Artifact.format,
    unique=True,
    # written as each database's own rendering of ``WHERE is_latest``, so a query's
    # ``.where(Artifact.is_latest)`` matches the index predicate (SQLite matches it textually)
    postgresql_where=text("is_latest"),
    sqlite_where=text("is_latest = 1"),
)
# `catalog list --latest` without a model: the newest flagged rows first, a page at a time,
# read in order from this partial index (a few hundred entries) instead of sorting every
# flagged row (one per group: 60,000 at 1M artifacts).
Index(
    "ix_artifacts_latest_newest",
    Artifact.created_at,
    Artifact.id,
    postgresql_where=text("is_latest"),
    sqlite_where=text("is_latest = 1"),
)
# `catalog list --latest` joins each record's job by id for three of its fields: on
# PostgreSQL an index-only scan of this index rather than pk_jobs and then the job's heap
# page, per record (migration 0009). SQLite reads the job by its rowid either way.
Index(
    "ix_jobs_id_record",
    Job.id,
    postgresql_include=["batch_id", "status", "name"],
).ddl_if(dialect="postgresql")
