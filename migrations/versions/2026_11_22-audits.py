"""audits: recovery-attack audits of adapters and their per-attack results

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audits",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("adapter_id", sa.Uuid(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.String(length=20), nullable=True),
        sa.Column("report_key", sa.Text(), nullable=True),
        sa.Column("report_html_key", sa.Text(), nullable=True),
        sa.Column("signature", sa.String(length=64), nullable=True),
        sa.Column("signing_key_id", sa.String(length=16), nullable=True),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_audits_adapter_id_adapters")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_audits_job_id_jobs")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_audits_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audits")),
        sa.UniqueConstraint("job_id", name=op.f("uq_audits_job_id")),
    )
    op.create_index(op.f("ix_audits_tenant_id"), "audits", ["tenant_id"])
    op.create_index(op.f("ix_audits_adapter_id"), "audits", ["adapter_id"])
    op.create_table(
        "audit_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("audit_id", sa.Uuid(), nullable=False),
        sa.Column("attack", sa.String(length=40), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metric", sa.String(length=60), nullable=False),
        sa.Column("split", sa.String(length=200), nullable=False),
        sa.Column("effect", sa.String(length=20), nullable=False),
        sa.Column("before", sa.Float(), nullable=False),
        sa.Column("after_forgetting", sa.Float(), nullable=False),
        sa.Column("after_attack", sa.Float(), nullable=False),
        sa.Column("recovery", sa.Float(), nullable=True),
        sa.Column("excess_drop", sa.Float(), nullable=True),
        sa.Column("chance", sa.Float(), nullable=True),
        sa.Column("worst_variant", sa.String(length=200), nullable=False),
        sa.Column("verdict", sa.String(length=20), nullable=False),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("curves", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["audit_id"], ["audits.id"], name=op.f("fk_audit_results_audit_id_audits")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_results")),
        sa.UniqueConstraint("audit_id", "attack", name=op.f("uq_audit_results_audit_id")),
    )
    op.create_index(op.f("ix_audit_results_audit_id"), "audit_results", ["audit_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_results_audit_id"), table_name="audit_results")
    op.drop_table("audit_results")
    op.drop_index(op.f("ix_audits_adapter_id"), table_name="audits")
    op.drop_index(op.f("ix_audits_tenant_id"), table_name="audits")
    op.drop_table("audits")
