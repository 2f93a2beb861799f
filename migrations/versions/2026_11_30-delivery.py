"""delivery: jobs.progress_at (stall detection) and jobs.sent_at (the relay of queued jobs)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    # Jobs already running or queued when this runs: their last beat is their last progress, their creation their
    # send (so the relay waits its timeout before sending them again rather than sending them all at once).
    op.execute("UPDATE jobs SET progress_at = heartbeat_at WHERE status = 'running'")
    op.execute("UPDATE jobs SET sent_at = created_at WHERE status = 'queued'")


def downgrade() -> None:
    op.drop_column("jobs", "sent_at")
    op.drop_column("jobs", "progress_at")
