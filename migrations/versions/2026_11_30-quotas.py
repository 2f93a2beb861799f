"""quotas: the sizes of a job's evidence and of an audit's report, counted in a tenant's stored bytes

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before this migration count as 0 bytes: their objects are not measured again.
    op.add_column("jobs", sa.Column("evidence_size_bytes", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("audits", sa.Column("report_size_bytes", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("audits", "report_size_bytes")
    op.drop_column("jobs", "evidence_size_bytes")
