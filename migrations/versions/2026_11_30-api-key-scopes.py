"""api key scopes: every key's `["*"]` becomes explicit scopes, and keys get a name, last use, expiry and rotation

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
# 0015 is this branch's head; the integrator re-chains the migrations of parallel branches.
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_API_KEYS = sa.table("api_keys", sa.column("id", sa.Uuid()), sa.column("scopes", sa.JSON()))
# Before this migration no scope was checked and every key could read and submit for its tenant: that is what
# `["*"]` keeps meaning. No key had `admin` (the admin key was a setting, compared in the request gate).
_WILDCARD_MEANS = ["read", "submit"]


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("name", sa.String(length=200), nullable=False, server_default=""))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("replaced_by", sa.Uuid(), nullable=True))
        batch.create_foreign_key(op.f("fk_api_keys_replaced_by_api_keys"), "api_keys", ["replaced_by"], ["id"])
    # Row by row in Python: a JSON column compares alike on neither catalogue (Postgres `json` has no `=`).
    connection = op.get_bind()
    for key_id, scopes in connection.execute(sa.select(_API_KEYS.c.id, _API_KEYS.c.scopes)).all():
        if not scopes or "*" in scopes:
            explicit = sorted({*(s for s in scopes or [] if s != "*"), *_WILDCARD_MEANS})
            connection.execute(sa.update(_API_KEYS).where(_API_KEYS.c.id == key_id).values(scopes=explicit))


def downgrade() -> None:
    # Scopes stay as they are: the code before this migration never read them.
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("fk_api_keys_replaced_by_api_keys"), type_="foreignkey")
        batch.drop_column("replaced_by")
        batch.drop_column("expires_at")
        batch.drop_column("last_used_at")
        batch.drop_column("name")
