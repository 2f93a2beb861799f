"""job runtime: the device and the precision the worker ran the job's latest attempt with

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
# 0012 is this branch's head; the integrator re-chains the migrations of parallel branches.
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("device", sa.String(length=200), nullable=True))
    op.add_column("jobs", sa.Column("precision", sa.String(length=60), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "precision")
    op.drop_column("jobs", "device")
