"""customers: what Kafka mode published, and what the CRM dead-lettered

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN on both backends (SQLite keeps its AUTOINCREMENT table as it is).
    op.add_column("customers", sa.Column("crm_published_version", sa.Integer(), nullable=True))
    op.add_column("customers", sa.Column("crm_dead_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("crm_dead_version")
        batch.drop_column("crm_published_version")
