"""sync_claim_and_read: a batch's claim and queue read in one round trip (PostgreSQL)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

The delivery engine claims a batch's customers, then reads their queues. Two statements
because the read must see every row the claims' previous holder settled before giving
them back: a single statement reads from one snapshot, taken before its insert may have
waited for that holder's commit. In PL/pgSQL each statement takes its own snapshot (READ
COMMITTED), so the function keeps the two statements and their order, and saves the
engine a round trip (`sync.repository.claim_and_read`). SQLite has no such function and
runs the two statements.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CREATE = """
CREATE OR REPLACE FUNCTION sync_claim_and_read(
    p_customers INTEGER[],
    p_owner VARCHAR,
    p_expires_at TIMESTAMPTZ,
    p_now TIMESTAMPTZ,
    p_limit INTEGER
) RETURNS TABLE (
    claimed INTEGER,
    id BIGINT,
    customer_id INTEGER,
    operation VARCHAR,
    status VARCHAR,
    attempts INTEGER,
    last_error TEXT,
    next_attempt_at TIMESTAMPTZ,
    version INTEGER,
    payload JSON,
    crm_id VARCHAR,
    idempotency_key VARCHAR,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    customer_crm_id VARCHAR
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    got INTEGER[];
BEGIN
    -- The claim, as sync.repository.CLAIM_ARRAY: in customer order; another's unexpired
    -- claim stays.
    WITH taken AS (
        INSERT INTO sync_claims AS held (customer_id, owner, expires_at)
        SELECT wanted.customer_id, p_owner, p_expires_at
        FROM unnest(p_customers) AS wanted(customer_id)
        ORDER BY wanted.customer_id
        ON CONFLICT (customer_id) DO UPDATE
        SET owner = excluded.owner, expires_at = excluded.expires_at
        WHERE held.owner = excluded.owner OR held.expires_at < p_now
        RETURNING held.customer_id, held.owner
    )
    SELECT coalesce(array_agg(taken.customer_id), '{}') INTO got
    FROM taken WHERE taken.owner = p_owner;
    -- A new snapshot: every row the previous holder settled before its claim went.
    -- Each claimed customer's first p_limit requests, oldest first (a customer with
    -- none: one row of nulls), and the CRM id its customer row holds.
    RETURN QUERY
    SELECT mine.customer_id, queued.id, queued.customer_id, queued.operation,
           queued.status, queued.attempts, queued.last_error, queued.next_attempt_at,
           queued.version, queued.payload, queued.crm_id, queued.idempotency_key,
           queued.created_at, queued.updated_at,
           (SELECT customers.crm_id FROM customers WHERE customers.id = mine.customer_id)
    FROM unnest(got) AS mine(customer_id)
    LEFT JOIN LATERAL (
        SELECT * FROM failed_requests AS request
        WHERE request.customer_id = mine.customer_id
        ORDER BY request.id
        LIMIT p_limit
    ) AS queued ON true
    ORDER BY mine.customer_id, queued.id;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS sync_claim_and_read(INTEGER[], VARCHAR, TIMESTAMPTZ,"
            " TIMESTAMPTZ, INTEGER)"
        )
