"""signing keys: published Ed25519 public keys with their validity; audits hold an Ed25519 signature and key id

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 12:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
# 0015 is this branch's head; the integrator re-chains the migrations of parallel branches.
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=20), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_signing_keys")),
    )
    # An Ed25519 signature is 86 base64url characters and its key id (a JWK thumbprint) 43.
    with op.batch_alter_table("audits") as batch:
        batch.alter_column("signature", type_=sa.String(length=128), existing_type=sa.String(length=64))
        batch.alter_column("signing_key_id", type_=sa.String(length=64), existing_type=sa.String(length=16))


def downgrade() -> None:
    with op.batch_alter_table("audits") as batch:
        batch.alter_column("signing_key_id", type_=sa.String(length=16), existing_type=sa.String(length=64))
        batch.alter_column("signature", type_=sa.String(length=64), existing_type=sa.String(length=128))
    op.drop_table("signing_keys")
