"""deletions: signed deletion receipts, tombstones of deleted resources, and a tenant's evidence retention

Revision ID: 0018
Revises: 0015
Create Date: 2026-11-30 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
# 0015 is this branch's head; the integrator re-chains the migrations of parallel branches.
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("evidence_retention_days", sa.Integer(), nullable=True))
    op.create_table(
        "deletions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("resource", sa.String(length=20), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("receipt", sa.JSON(), nullable=False),
        sa.Column("pending_keys", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_deletions_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deletions")),
    )
    op.create_index(op.f("ix_deletions_tenant_id"), "deletions", ["tenant_id"])
    op.create_index(op.f("ix_deletions_deleted_at"), "deletions", ["deleted_at"])
    op.create_table(
        "tombstones",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("resource", sa.String(length=20), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("deletion_id", sa.Uuid(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_tombstones_tenant_id_tenants")),
        sa.ForeignKeyConstraint(["deletion_id"], ["deletions.id"], name=op.f("fk_tombstones_deletion_id_deletions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tombstones")),
        sa.UniqueConstraint("resource", "resource_id", name=op.f("uq_tombstones_resource")),
    )
    op.create_index(op.f("ix_tombstones_tenant_id"), "tombstones", ["tenant_id"])
    op.create_index(op.f("ix_tombstones_deletion_id"), "tombstones", ["deletion_id"])


def downgrade() -> None:
    op.drop_table("tombstones")
    op.drop_table("deletions")
    op.drop_column("tenants", "evidence_retention_days")
