"""sync_claim_and_read keeps cached plans where the sync engine plans each statement

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

The sync engine's connections plan every statement for its parameters
(`plan_cache_mode = force_custom_plan`, `db._plan_for_each_execution`): the settle's
update of `customers` by an array of ids kept a sequential scan planned while the table
was small. The claim function's two statements look rows up by key (the claims' primary
key, `failed_requests` by customer, `customers` by id), plans that stay right as the
tables grow; planned anew on every call they cost the claim twice its time (0.26 ->
0.50 ms a call). The function sets the default for its own statements.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "sync_claim_and_read(INTEGER[], VARCHAR, TIMESTAMPTZ, TIMESTAMPTZ, INTEGER)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {FUNCTION} SET plan_cache_mode = auto")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {FUNCTION} RESET plan_cache_mode")
