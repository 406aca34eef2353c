"""Rename jobs.config to jobs.spec: the column holds the whole typed job contract
(``JobSpec.to_payload()``), not a quantization config.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("config", new_column_name="spec")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("spec", new_column_name="config")
