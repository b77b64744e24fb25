"""crm_pauses: a 429's pause, shared by every replica

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crm_pauses",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("until_epoch", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_crm_pauses")),
    )


def downgrade() -> None:
    op.drop_table("crm_pauses")
