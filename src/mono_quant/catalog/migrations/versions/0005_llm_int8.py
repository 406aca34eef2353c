"""Artifacts: SmoothQuant alpha, weight algorithm, layers kept in float for accuracy, and
perplexity (float, quantized, increase) — typed columns for LLM-grade int8.

Activation mode (static / dynamic) needs no column: ``mode`` already holds it.

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = (
    ("smoothquant_alpha", sa.Double()),
    ("weight_algorithm", sa.String(16)),
    ("layers_excluded_for_accuracy", sa.Integer()),
    ("perplexity_fp", sa.Double()),
    ("perplexity_quant", sa.Double()),
    ("perplexity_increase", sa.Double()),
)


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        for name, type_ in _COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
