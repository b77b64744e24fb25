"""`sink_customers` on both databases (`customer_service.sink.ledger`): what the sink
settled last per customer, read back in one statement; a row only ever moves forward."""

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from customer_service.db import create_sessionmaker
from customer_service.sink import ledger
from customer_service.sink.ledger import Settled

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


async def test_the_newest_settled_event_of_each_customer_is_kept_and_never_lowered(
    sql_engine: AsyncEngine,
) -> None:
    sessions = create_sessionmaker(sql_engine)
    async with sessions() as session, session.begin():
        assert await ledger.settled_of(session, [1, 2]) == {}
        await ledger.record(
            session,
            [
                Settled(1, 2, "e1", "applied", "hs-1"),
                Settled(2, 2, "e2", "dead", None, "refused " * 500),
                Settled(1, 4, "e1b", "applied", "hs-1"),  # the newer of customer 1 wins
            ],
            NOW,
        )
    async with sessions() as session, session.begin():
        found = await ledger.settled_of(session, [1, 2, 3])
        assert found[1] == Settled(1, 4, "e1b", "applied", "hs-1")
        assert (found[2].status, len(found[2].error or "")) == ("dead", 2000)
        assert set(found) == {1, 2}
        # A late settle of an older event (a sink that lost its partitions) changes nothing;
        # a newer one moves the row on.
        await ledger.record(session, [Settled(1, 3, "old", "applied", "hs-9")], NOW)
        await ledger.record(session, [Settled(2, 5, "e2b", "applied", "hs-2")], NOW)
    async with sessions() as session, session.begin():
        found = await ledger.settled_of(session, [1, 2])
        assert found[1] == Settled(1, 4, "e1b", "applied", "hs-1")
        assert found[2] == Settled(2, 5, "e2b", "applied", "hs-2")
        # Another event of the same rank (reconciliation's repair of a missing record)
        # takes the row: the record it made has another CRM id.
        await ledger.record(session, [Settled(2, 5, "repair", "applied", "hs-3")], NOW)
    async with sessions() as session, session.begin():
        found = await ledger.settled_of(session, [2])
        assert found[2] == Settled(2, 5, "repair", "applied", "hs-3")
