"""metric curves: one metric per (job, stage, split, name, layer); curve points in their own table; the outcome of
forgetting on the job

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "curve_points",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("split", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=60), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_curve_points_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_curve_points")),
        sa.UniqueConstraint("job_id", "split", "name", "step", name=op.f("uq_curve_points_job_id")),
    )
    op.create_index(op.f("ix_curve_points_job_id"), "curve_points", ["job_id"])
    # Curve points written before this migration were metrics with a step: move them, keeping a step's last value.
    op.execute(
        "INSERT INTO curve_points (job_id, split, name, step, value) "
        "SELECT m.job_id, m.split, m.name, m.step, m.value FROM metrics m WHERE m.id IN "
        "(SELECT MAX(id) FROM metrics WHERE step IS NOT NULL GROUP BY job_id, split, name, step)"
    )
    op.execute("DELETE FROM metrics WHERE step IS NOT NULL")
    # A stage metric measured twice keeps its last value (GROUP BY puts NULL layers in one group on both catalogues).
    op.execute(
        "DELETE FROM metrics WHERE id NOT IN (SELECT MAX(id) FROM metrics GROUP BY job_id, stage, split, name, layer)"
    )
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("step")
    # A plain UNIQUE treats NULL layers as distinct (SQLite; Postgres without NULLS NOT DISTINCT): index the layer as
    # coalesce(layer, -1), layers being >= 0.
    op.create_index(
        "uq_metrics_key",
        "metrics",
        ["job_id", "stage", "split", "name", sa.text("coalesce(layer, -1)")],
        unique=True,
    )
    op.add_column("jobs", sa.Column("forgetting", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "forgetting")
    op.drop_index("uq_metrics_key", table_name="metrics")
    with op.batch_alter_table("metrics") as batch:
        batch.add_column(sa.Column("step", sa.Integer(), nullable=True))
    op.execute(
        "INSERT INTO metrics (job_id, stage, split, name, value, step) "
        "SELECT job_id, 'forgotten', split, name, value, step FROM curve_points"
    )
    op.drop_index(op.f("ix_curve_points_job_id"), table_name="curve_points")
    op.drop_table("curve_points")
