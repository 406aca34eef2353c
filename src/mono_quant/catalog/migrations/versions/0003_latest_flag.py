"""Maintained "latest" flag on artifacts, with a partial unique index; jobs paged by status.

``artifacts.is_latest`` marks the newest artifact (by ``created_at``, then ``id``) of each
(model source, config digest, format) group; ``ix_artifacts_latest_flag`` indexes only the
flagged rows, one per group. Existing rows are flagged here with one window-function
UPDATE; from then on :mod:`mono_quant.catalog.latest` keeps the flag right.

``ix_jobs_batch_id_status`` gains ``id`` as a last column: a batch's status counts stay
index-only, and a page of a batch's jobs of one status is read in id order (PostgreSQL; a
SQLite index ends with the rowid anyway).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

# A frozen copy of mono_quant.catalog.latest.RECOMPUTE_SQL's second statement (migrations
# never import the package's code, which may change later).
_FLAG_NEWEST = """
UPDATE artifacts SET is_latest = true WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (
            PARTITION BY model_source, config_digest, format
            ORDER BY created_at DESC, id DESC) AS rank
        FROM artifacts) AS ranked
    WHERE rank = 1)
"""


def upgrade() -> None:
    # A plain ADD COLUMN on both databases (batch mode would copy the SQLite table and lose
    # the DESC columns of ix_artifacts_latest on the way).
    op.add_column(
        "artifacts",
        sa.Column("is_latest", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.execute(_FLAG_NEWEST)
    op.create_index(
        "ix_artifacts_latest_flag",
        "artifacts",
        ["model_source", "config_digest", "format"],
        unique=True,
        postgresql_where=sa.text("is_latest"),
        sqlite_where=sa.text("is_latest = 1"),  # how SQLAlchemy renders the flag there
    )
    op.create_index("ix_jobs_batch_id_status_id", "jobs", ["batch_id", "status", "id"])
    op.drop_index("ix_jobs_batch_id_status", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_batch_id_status", "jobs", ["batch_id", "status"])
    op.drop_index("ix_jobs_batch_id_status_id", table_name="jobs")
    op.drop_index("ix_artifacts_latest_flag", table_name="artifacts")
    # SQLite copies the table to drop a column: ix_artifacts_latest is rebuilt with its DESC
    # columns afterwards.
    op.drop_index("ix_artifacts_latest", table_name="artifacts")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("is_latest")
    op.create_index(
        "ix_artifacts_latest",
        "artifacts",
        ["model_source", "config_digest", "format", sa.text("created_at DESC"),
         sa.text("id DESC")],
    )
