"""adapter lineage: adapters.parent_id becomes parent_adapter_id, the adapter a stacked forget request continued

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
# The integrator re-chains the migrations of parallel branches.
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The column has existed since 0001 and nothing wrote it: renamed, with its foreign key renamed to match the
    # naming convention (batch mode: SQLite rebuilds the table).
    # Two batches: SQLite's rebuild loses a foreign key created in the batch that renames its column.
    with op.batch_alter_table("adapters") as batch:
        batch.drop_constraint("fk_adapters_parent_id_adapters", type_="foreignkey")
        batch.alter_column("parent_id", new_column_name="parent_adapter_id")
    with op.batch_alter_table("adapters") as batch:
        batch.create_foreign_key(
            op.f("fk_adapters_parent_adapter_id_adapters"), "adapters", ["parent_adapter_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.drop_constraint("fk_adapters_parent_adapter_id_adapters", type_="foreignkey")
        batch.alter_column("parent_adapter_id", new_column_name="parent_id")
    with op.batch_alter_table("adapters") as batch:
        batch.create_foreign_key(op.f("fk_adapters_parent_id_adapters"), "adapters", ["parent_id"], ["id"])
