"""unconfirmed_events: Kafka mode's published versions the CRM has not confirmed yet

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from customer_service.columns import BigIntId, UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "unconfirmed_events",
        sa.Column("id", BigIntId, autoincrement=False, nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("operation", sa.String(10), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=False),
        sa.Column("publications", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unconfirmed_events")),
    )
    op.create_index(
        "ix_unconfirmed_events_customer_id_version",
        "unconfirmed_events",
        ["customer_id", "version"],
    )
    op.create_index("ix_unconfirmed_events_published_at", "unconfirmed_events", ["published_at"])


def downgrade() -> None:
    op.drop_index("ix_unconfirmed_events_published_at", table_name="unconfirmed_events")
    op.drop_index("ix_unconfirmed_events_customer_id_version", table_name="unconfirmed_events")
    op.drop_table("unconfirmed_events")
