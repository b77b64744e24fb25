"""crm_call_windows: the CRM calls of every replica, counted by wall-clock second

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
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
        "crm_call_windows",
        sa.Column("second", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("second", name=op.f("pk_crm_call_windows")),
    )


def downgrade() -> None:
    op.drop_table("crm_call_windows")
