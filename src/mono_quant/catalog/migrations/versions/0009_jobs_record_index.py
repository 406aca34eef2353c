"""PostgreSQL: the job fields of a ``--latest`` record from an index-only scan.

``catalog list --latest`` for given models joins each flagged artifact's job by id for the
record's ``batch_id``, ``job_status`` and ``job_name``: 300 jobs for 100 models. Through
``pk_jobs`` each probe also read the job's heap page (a 1M-job table is 250 MB, mostly
outside the server's shared buffers). This index holds the three fields beside the id, so
the probe is an index-only scan wherever the visibility map says the page is all-visible
(a settled job's, after autovacuum; a job just finished is read from its heap page, with
the same result). Measured at 1M artifacts (docs/performance.md, issue 16, session 8):
1,499 buffers instead of 1,798 and ~0.6-0.9 ms less per call. SQLite reads the job by its
rowid (the integer primary key) and gets no index.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_jobs_id_record", "jobs", ["id"],
                        postgresql_include=["batch_id", "status", "name"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_jobs_id_record", table_name="jobs")
