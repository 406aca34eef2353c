"""Rename jobs.config to jobs.spec: the column holds the whole typed job contract
(``JobSpec.to_payload()``), not a quantization config.

A plain ``ALTER TABLE … RENAME COLUMN`` (PostgreSQL, SQLite 3.25+): no table rebuild, so
SQLite's foreign keys from ``attempts`` and ``artifacts`` to ``jobs`` are untouched (a batch
rebuild would drop ``jobs`` under them).

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
    op.execute("ALTER TABLE jobs RENAME COLUMN config TO spec")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs RENAME COLUMN spec TO config")
