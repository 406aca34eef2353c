"""Jobs: an index on (batch_id, id), so a batch's jobs are read in id order, a page at a time.

The ``(batch_id, status, id)`` index serves a batch's status counts but not "its jobs in id
order": without this one, PostgreSQL walked the primary key and filtered on ``batch_id``
(83,000 rows skipped for one page of the 84th batch, 28 ms; 0.07 ms with it). It also lets
the batch page's time aggregate bound its read of ``attempts`` (the batch's lowest and
highest job id).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_jobs_batch_id_id"), "jobs", ["batch_id", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_batch_id_id"), table_name="jobs")
