"""``catalog list --latest`` paged newest first at any size: a partial index of the flagged
artifacts in ``(created_at, id)`` order.

Without a model filter, ``--latest`` asks for the newest flagged rows, a page at a time;
``ix_artifacts_latest_flag`` is in group order, so each page sorted every flagged row (one
per group: 60,000 at 1M artifacts). This index holds only the flagged rows, in the order
the page is read.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(
        "ix_artifacts_latest_newest",
        "artifacts",
        ["created_at", "id"],
        postgresql_where=sa.text("is_latest"),
        sqlite_where=sa.text("is_latest = 1"),  # how SQLAlchemy renders the flag there
    )


def downgrade() -> None:
    op.drop_index("ix_artifacts_latest_newest", table_name="artifacts")
