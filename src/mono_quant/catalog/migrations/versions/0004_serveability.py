"""Artifacts: who serves them (serveable_by, serveable_reason) and low_compression.

Revision ID: 0004
Revises: 0003 (after merging main; the lead re-chains at merge)
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("serveable_by", sa.String(16), nullable=True))
        batch.add_column(sa.Column("serveable_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("low_compression", sa.Boolean(), nullable=True))
    op.create_index(op.f("ix_artifacts_serveable_by"), "artifacts", ["serveable_by"])


def downgrade() -> None:
    op.drop_index(op.f("ix_artifacts_serveable_by"), table_name="artifacts")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("low_compression")
        batch.drop_column("serveable_reason")
        batch.drop_column("serveable_by")
