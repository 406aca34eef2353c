"""Create the catalog: batches, jobs, attempts, artifacts.

A frozen snapshot of the schema as first released: plain SQLAlchemy types only (no imports
from the models), so later model changes cannot change what this migration creates.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

ERROR_KINDS = ("bad_input", "bad_config", "transient", "poison", "internal", "cancelled")


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _enum(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def _metric(name: str) -> sa.Column:
    return sa.Column(name, sa.Double(), nullable=True)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        _time("submitted_at", nullable=False),
        sa.Column("manifest_digest", sa.String(64), nullable=True),
        sa.Column("requested_by", sa.String(255), nullable=True),
        sa.Column("labels", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("model_source", sa.Text(), nullable=False),
        sa.Column("model_source_json", _json(), nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column(
            "status",
            _enum("job_status",
                  ("pending", "queued", "running", "succeeded", "failed", "cancelled")),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("error_kind", _enum("job_error_kind", ERROR_KINDS), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("device", sa.String(64), nullable=True),
        _time("heartbeat_at"),
        sa.Column("progress", _json(), nullable=True),
        _time("created_at", nullable=False),
        _time("queued_at"),
        _time("started_at"),
        _time("finished_at"),
        sa.Column("celery_task_id", sa.String(255), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_jobs_batch_id_batches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_batch_id_status"), "jobs", ["batch_id", "status"])
    op.create_index(op.f("ix_jobs_idempotency_key"), "jobs", ["idempotency_key"])
    op.create_index(op.f("ix_jobs_status_queue"), "jobs", ["status", "queue"])

    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("device", sa.String(64), nullable=True),
        _time("started_at", nullable=False),
        _time("finished_at"),
        sa.Column(
            "outcome",
            _enum("attempt_outcome", ("succeeded", "failed", "cancelled", "lost")),
            nullable=True,
        ),
        sa.Column("error_kind", _enum("attempt_error_kind", ERROR_KINDS), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_attempts_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
        sa.UniqueConstraint("job_id", "number", name=op.f("uq_attempts_job_id_number")),
    )

    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("model_source", sa.Text(), nullable=False),
        sa.Column("model_digest", sa.String(64), nullable=True),
        sa.Column("config_digest", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.Text(), nullable=False),
        sa.Column(
            "format",
            _enum("artifact_format", ("safetensors", "pt", "compressed-tensors")),
            nullable=False,
        ),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        _time("created_at", nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("scheme", sa.String(16), nullable=False),
        sa.Column("granularity", sa.String(16), nullable=False),
        sa.Column("group_size", sa.Integer(), nullable=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("per_channel", sa.Boolean(), nullable=False),
        sa.Column("observer", sa.String(32), nullable=False),
        sa.Column("activation_observer", sa.String(32), nullable=True),
        sa.Column("activation_scheme", sa.String(16), nullable=True),
        sa.Column("calibration_samples", sa.Integer(), nullable=False),
        sa.Column("layers_quantized", sa.Integer(), nullable=True),
        sa.Column("layers_total", sa.Integer(), nullable=True),
        _metric("weight_sqnr_db"),
        _metric("weight_sqnr_db_min"),
        _metric("output_sqnr_db"),
        _metric("output_cosine"),
        sa.Column("size_bytes_fp", sa.BigInteger(), nullable=True),
        sa.Column("size_bytes_quant", sa.BigInteger(), nullable=True),
        _metric("compression_ratio"),
        sa.Column("torch_version", sa.String(64), nullable=True),
        sa.Column("mono_quant_version", sa.String(64), nullable=True),
        sa.Column("safetensors_version", sa.String(64), nullable=True),
        sa.Column("python_version", sa.String(64), nullable=True),
        sa.Column("info", _json(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_artifacts_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_artifacts_idempotency_key")),
        sa.UniqueConstraint("job_id", name=op.f("uq_artifacts_job_id")),
        sa.UniqueConstraint("storage_key", name=op.f("uq_artifacts_storage_key")),
    )
    op.create_index(op.f("ix_artifacts_created_at"), "artifacts", ["created_at"])
    op.create_index(
        "ix_artifacts_latest",
        "artifacts",
        ["model_source", "config_digest", "format", sa.text("created_at DESC"),
         sa.text("id DESC")],
    )
    op.create_index(op.f("ix_artifacts_model_digest"), "artifacts", ["model_digest"])
    op.create_index(
        op.f("ix_artifacts_model_source_created_at"), "artifacts", ["model_source", "created_at"]
    )
    op.create_index(
        op.f("ix_artifacts_scheme_weight_sqnr_db"), "artifacts", ["scheme", "weight_sqnr_db"]
    )


def downgrade() -> None:
    op.drop_table("artifacts")  # its indexes go with it
    op.drop_table("attempts")
    op.drop_table("jobs")
    op.drop_table("batches")
