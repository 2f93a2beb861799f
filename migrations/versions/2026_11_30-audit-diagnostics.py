"""audit diagnostics: restore and patch results (KRS per component and window of layers), apart from the verdicts

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
# 0009 is this branch's head (metric intervals); the integrator re-chains the migrations of parallel branches.
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Audits made before this migration keep their restore and patch results in audit_results, as they were judged
    # then; new audits write them here.
    op.create_table(
        "audit_diagnostics",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("audit_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metric", sa.String(length=60), nullable=False),
        sa.Column("split", sa.String(length=200), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("rows_undefined", sa.Integer(), nullable=False),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("skipped_components", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["audit_id"], ["audits.id"], name=op.f("fk_audit_diagnostics_audit_id_audits")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_diagnostics")),
        sa.UniqueConstraint("audit_id", "name", name=op.f("uq_audit_diagnostics_audit_id")),
    )
    op.create_index(op.f("ix_audit_diagnostics_audit_id"), "audit_diagnostics", ["audit_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_diagnostics_audit_id"), table_name="audit_diagnostics")
    op.drop_table("audit_diagnostics")
