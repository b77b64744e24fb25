"""Kafka mode on PostgreSQL: the status reader takes the customer rows it records in
customer order, whatever order the statuses came in (partition after partition), as the
delivery engine's settle does (its UPDATE finds them by primary key). Taken in the fetch's
order they formed a circle with a settle: PostgreSQL broke it only after its
`deadlock_timeout` (1 s), every delivery of the process waiting meanwhile."""

import asyncio

import pytest
from outbox_support import customers_with_requests
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from support import eventually

from customer_service.db import create_sessionmaker
from customer_service.sync.status_consumer import APPLIED, DEAD, CrmStatus, record_statuses

LOCK = "SELECT id FROM customers WHERE id = :id FOR UPDATE"


async def _waiting_for_a_lock(engine: AsyncEngine) -> bool:
    async with engine.connect() as watcher:
        count = await watcher.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        )
    return bool(count)


@pytest.mark.parametrize("kinds", [(APPLIED, APPLIED), (DEAD, APPLIED), (APPLIED, DEAD)])
async def test_statuses_lock_their_customers_in_customer_order(
    postgres_engine: AsyncEngine, kinds: tuple[str, str]
) -> None:
    sessionmaker = create_sessionmaker(postgres_engine)
    low, high = sorted(await customers_with_requests(sessionmaker, 2, name="L"))
    # The later partition's status first, as a fetch of two partitions may give them.
    statuses = [CrmStatus(high, 1, kinds[0], "crm-high"), CrmStatus(low, 1, kinds[1], "crm-low")]

    async def record() -> None:
        async with sessionmaker() as session, session.begin():
            await record_statuses(session, statuses=statuses)

    async with postgres_engine.connect() as settle:
        # A settle holding the lower customer's row (it takes them in customer order).
        await settle.begin()
        await settle.execute(text(LOCK), {"id": low})
        recording = asyncio.create_task(record())
        await eventually(lambda: _waiting_for_a_lock(postgres_engine), within=10)
        assert not recording.done()
        # The reader waits for the lower customer before it took the higher one: the
        # settle can still take it (it would be the circle's second half).
        async with postgres_engine.connect() as other:
            await other.begin()
            try:
                await other.execute(text(LOCK + " NOWAIT"), {"id": high})
            except DBAPIError as error:
                pytest.fail(f"the status reader took the later customer first: {error}")
            await other.rollback()
        await settle.commit()
        await asyncio.wait_for(recording, 10)
    async with postgres_engine.connect() as check:
        rows = (
            await check.execute(
                text("SELECT id, crm_synced_version, crm_dead_version FROM customers ORDER BY id")
            )
        ).all()
    expected = {
        low: (1, None) if kinds[1] == APPLIED else (None, 1),
        high: (1, None) if kinds[0] == APPLIED else (None, 1),
    }
    assert {r.id: (r.crm_synced_version, r.crm_dead_version) for r in rows} == expected
