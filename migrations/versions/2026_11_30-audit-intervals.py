"""audit intervals: each attack result's rows, interval, never-learned control and inconclusive reason; the audit's
verdict reasons

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The worst variant's: rows, the Bonferroni level of its intervals, its rate's interval, the control's recovery and
# the excess over it with their intervals. Results written before this migration have none of them (null).
_RESULT_FLOATS = (
    "confidence",
    "ci_low",
    "ci_high",
    "control_recovery",
    "control_ci_low",
    "control_ci_high",
    "excess_recovery",
    "excess_ci_low",
    "excess_ci_high",
)


def upgrade() -> None:
    op.add_column("audit_results", sa.Column("n", sa.Integer(), nullable=True))
    for name in _RESULT_FLOATS:
        op.add_column("audit_results", sa.Column(name, sa.Float(), nullable=True))
    op.add_column("audit_results", sa.Column("inconclusive_reason", sa.String(40), nullable=True))
    # Audits judged before this migration gave no reasons: an empty list, not an invented one.
    op.add_column("audits", sa.Column("verdict_reasons", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    op.drop_column("audits", "verdict_reasons")
    op.drop_column("audit_results", "inconclusive_reason")
    for name in reversed(_RESULT_FLOATS):
        op.drop_column("audit_results", name)
    op.drop_column("audit_results", "n")
