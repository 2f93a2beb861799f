"""workers: the device each worker computes on and its CUDA memory, reported with its beat (GET /metrics)

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
# 0015 is this branch's head; the integrator re-chains the migrations of parallel branches.
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("device", sa.String(length=200), nullable=True))
    for column in ("cuda_memory_allocated_bytes", "cuda_memory_reserved_bytes", "cuda_memory_total_bytes"):
        op.add_column("workers", sa.Column(column, sa.BigInteger(), nullable=True))


def downgrade() -> None:
    for column in ("cuda_memory_total_bytes", "cuda_memory_reserved_bytes", "cuda_memory_allocated_bytes"):
        op.drop_column("workers", column)
    op.drop_column("workers", "device")
