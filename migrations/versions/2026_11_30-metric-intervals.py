"""metric intervals: the rows a metric rests on and its 95% interval

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Metrics written before this migration have no n and no interval (null): nothing is invented for them.
    op.add_column("metrics", sa.Column("n", sa.Integer(), nullable=True))
    op.add_column("metrics", sa.Column("ci_low", sa.Float(), nullable=True))
    op.add_column("metrics", sa.Column("ci_high", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("metrics", "ci_high")
    op.drop_column("metrics", "ci_low")
    op.drop_column("metrics", "n")
