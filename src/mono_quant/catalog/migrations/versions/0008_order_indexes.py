"""Artifacts: one ``(column, id)`` index per sortable column, so a sorted page of the
artifacts (``catalog list --order-by``, the web catalog's artifacts page) reads its rows in
order from an index instead of sorting every row the filters select.

Sorted by size over half of 100,000 artifacts, both databases read and sorted 50,000 rows
for a page of 100 (75-96 ms). ``id`` breaks ties, so the index holds the whole order; on a
nullable column the page is read in two steps (its non-NULL rows through the index, then its
NULL rows by id: ``mono_quant.catalog.queries``), so one index serves both directions with
the NULLs last on both databases. ``ix_artifacts_created_at`` becomes ``(created_at, id)``
(on PostgreSQL the ties were sorted; SQLite's index already ended in the rowid).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

#: The sortable columns (``ORDER_FIELDS``) that get a ``(column, id)`` index: not ``id`` (the
#: primary key) nor ``model_source`` (``ix_artifacts_model_source_created_at`` serves it,
#: sorting only the few rows of each model at the page's edge; a second index on it made
#: SQLite prefer it to the ``--latest`` flag index).
COLUMNS = (
    "created_at", "size_bytes", "weight_sqnr_db", "weight_sqnr_db_min",
    "output_sqnr_db", "output_cosine", "compression_ratio", "perplexity_increase",
    "perplexity_quant",
)


def upgrade() -> None:
    op.drop_index(op.f("ix_artifacts_created_at"), table_name="artifacts")
    for column in COLUMNS:
        op.create_index(op.f(f"ix_artifacts_{column}_id"), "artifacts", [column, "id"])


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_index(op.f(f"ix_artifacts_{column}_id"), table_name="artifacts")
    op.create_index(op.f("ix_artifacts_created_at"), "artifacts", ["created_at"])
