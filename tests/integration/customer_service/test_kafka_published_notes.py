"""Kafka mode, on both databases: the publishes acknowledged together have their
`crm_published_version` noted in one transaction, and a late note never lowers it
(`sync.transports.kafka.KafkaSender`)."""

import asyncio
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.customers.models import Customer
from customer_service.db import create_sessionmaker
from customer_service.sync.transports.kafka import KafkaSender


async def _customers(engine: AsyncEngine, count: int) -> list[int]:
    async with create_sessionmaker(engine)() as session, session.begin():
        customers = []
        for n in range(count):
            now = utc_now()
            customer = Customer(
                first_name=f"P{n}",
                last_name="Published",
                email=f"p{n}@example.com",
                email_key=f"p{n}@example.com",
                created_at=now,
                updated_at=now,
            )
            session.add(customer)
            customers.append(customer)
        await session.flush()
        return [customer.id for customer in customers]


async def _published(engine: AsyncEngine) -> dict[int, int | None]:
    async with create_sessionmaker(engine)() as session:
        rows = await session.execute(select(Customer.id, Customer.crm_published_version))
        return {customer_id: version for customer_id, version in rows.tuples()}


async def test_publishes_acknowledged_together_are_noted_in_one_transaction_and_only_raise(
    sql_engine: AsyncEngine, database_url: str
) -> None:
    engine = sql_engine
    ids = await _customers(engine, 6)
    sender = KafkaSender(Settings(database_url=database_url), create_sessionmaker(engine))
    transactions = 0

    def count(_connection: Any) -> None:
        nonlocal transactions
        transactions += 1

    event.listen(engine.sync_engine, "begin", count)
    try:
        # As when one produce response acknowledges many sends: all wake at once.
        notes = [(customer_id, 3) for customer_id in ids] + [(ids[0], 5), (ids[1], 2)]
        await asyncio.wait_for(
            asyncio.gather(*(sender._note_published(c, v) for c, v in notes)), 10
        )
        assert transactions == 1
        assert await _published(engine) == {ids[0]: 5, **{c: 3 for c in ids[1:]}}

        # A note acknowledged late, for an older version, changes nothing; one alone is
        # a transaction of its own.
        transactions = 0
        await asyncio.wait_for(sender._note_published(ids[0], 4), 10)
        await asyncio.wait_for(sender._note_published(ids[2], 7), 10)
        assert transactions == 2
    finally:
        event.remove(engine.sync_engine, "begin", count)
    assert await _published(engine) == {
        ids[0]: 5,
        ids[2]: 7,
        **{c: 3 for c in ids[1:] if c != ids[2]},
    }
