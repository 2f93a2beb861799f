"""base models' decoder block count, so the API checks layer params at request time

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("base_models", sa.Column("n_layers", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("base_models", "n_layers")
