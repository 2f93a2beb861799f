"""base models: the sha256 of their weights and the revision a hub source was registered with

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("base_models") as batch:
        batch.add_column(sa.Column("weights_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("requested_revision", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("base_models") as batch:
        batch.drop_column("requested_revision")
        batch.drop_column("weights_sha256")
