"""A batch's claim and queue read (`repository.claim_and_read`): one round trip on
PostgreSQL (migration 0007's function), two statements on SQLite, the same answer; and on
PostgreSQL the read still sees what the claims' previous holder settled while the claim
waited for it (one snapshot for both would not)."""

import asyncio

from outbox_support import customers_with_requests
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import eventually

from customer_service.columns import utc_now
from customer_service.customers.models import Customer
from customer_service.db import create_sessionmaker
from customer_service.sync import repository
from customer_service.sync.models import FailedRequest

LEASE = 30.0


async def test_claim_and_read_answers_as_the_claim_then_the_read(sql_engine: AsyncEngine) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    (a,) = await customers_with_requests(sessionmaker, 1, updates=3, name="A")
    b, elsewhere = await customers_with_requests(sessionmaker, 2, name="B")
    nothing_queued = 999_999
    async with sessionmaker() as session, session.begin():
        await session.execute(
            Customer.__table__.update().where(Customer.id == a).values(crm_id="crm-a")
        )
        assert await repository.claim(session, [elsewhere], "other", utc_now(), LEASE)
    async with sql_engine.connect() as connection:
        claimed, queues = await repository.claim_and_read(
            connection, [b, nothing_queued, a, elsewhere], "mine", utc_now(), LEASE, limit=3
        )
        await connection.commit()
    assert claimed == {a, b, nothing_queued}  # another's unexpired claim stays
    assert set(queues) == {a, b}  # claimed with nothing queued: no queue
    rows, crm_id = queues[a]
    assert crm_id == "crm-a" and queues[b][1] is None
    assert [row.version for row in rows] == [1, 2, 3]  # oldest first, at most the limit
    assert [row.operation for row in rows] == ["CREATE", "UPDATE", "UPDATE"]
    assert rows[0].payload is not None and rows[0].payload["firstName"] == "A0"
    assert rows[0].created_at.tzinfo is not None
    assert queues[b][0][0].customer_id == b
    # The read is the one `queues_and_crm_ids` makes.
    async with sessionmaker() as session:
        assert await repository.queues_and_crm_ids(session, [a, b], limit=3) == queues
    # The claims are taken (committed), under "mine".
    async with sessionmaker() as session:
        assert await repository.claim(session, [a, b], "third", utc_now(), LEASE) == set()


async def test_a_claim_that_waited_for_the_holder_reads_what_the_holder_settled(
    postgres_engine: AsyncEngine,
) -> None:
    """The holder settles (its delivered row deleted, its claim given back) in a
    transaction still open when the next claim comes: that claim waits for it, and its
    read, after the holder commits, has the delivered row gone (one snapshot taken before
    the wait would still hold it, and the row would be sent again)."""
    sessionmaker = create_sessionmaker(postgres_engine)
    (a,) = await customers_with_requests(sessionmaker, 1, updates=1)
    async with sessionmaker() as session, session.begin():
        assert await repository.claim(session, [a], "holder", utc_now(), LEASE) == {a}
    first = select(FailedRequest.id).where(FailedRequest.customer_id == a).order_by("id")

    async def claim_next() -> tuple[set[int], repository.Queues]:
        async with postgres_engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            return await repository.claim_and_read(connection, [a], "next", utc_now(), LEASE)

    async with postgres_engine.connect() as holder:
        settling = await holder.begin()
        delivered = (await holder.execute(first)).scalars().first()
        await holder.execute(delete(FailedRequest).where(FailedRequest.id == delivered))
        await repository.release(holder, "holder", [a])
        waiting = asyncio.create_task(claim_next())

        async def claim_waits_for_the_holder() -> bool:
            async with postgres_engine.connect() as watcher:
                count = await watcher.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                )
            return bool(count) and not waiting.done()

        await eventually(claim_waits_for_the_holder, within=10)
        await settling.commit()
        claimed, queues = await asyncio.wait_for(waiting, 10)
    assert claimed == {a}
    assert [row.version for row in queues[a][0]] == [2]  # the delivered CREATE is gone
