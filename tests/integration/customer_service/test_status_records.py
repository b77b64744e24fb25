"""Kafka mode's status reader, on both databases: a batch of the CRM's statuses only ever
raises a customer's versions (read twice, or late, they change nothing), and an
`applied` status without a CRM id keeps the one the customer has."""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from customer_service.columns import utc_now
from customer_service.customers.models import Customer
from customer_service.db import create_sessionmaker
from customer_service.sync.status_consumer import APPLIED, DEAD, CrmStatus, record_statuses


async def _customers(engine: AsyncEngine, count: int) -> list[int]:
    async with create_sessionmaker(engine)() as session, session.begin():
        customers = [
            Customer(
                first_name=f"S{n}",
                last_name="Status",
                email=f"s{n}@example.com",
                email_key=f"s{n}@example.com",
                created_at=utc_now(),
                updated_at=utc_now(),
            )
            for n in range(count)
        ]
        session.add_all(customers)
        await session.flush()
        return [customer.id for customer in customers]


async def _record(engine: AsyncEngine, statuses: list[CrmStatus]) -> None:
    async with create_sessionmaker(engine)() as session, session.begin():
        await record_statuses(session, statuses=statuses)


async def _crm_columns(engine: AsyncEngine) -> dict[int, tuple[str | None, int | None, int | None]]:
    async with create_sessionmaker(engine)() as session:
        rows = await session.execute(
            select(
                Customer.id, Customer.crm_id, Customer.crm_synced_version, Customer.crm_dead_version
            )
        )
        return {cid: (crm_id, synced, dead) for cid, crm_id, synced, dead in rows.tuples()}


async def test_a_batch_of_statuses_only_raises_and_keeps_a_known_crm_id(
    sql_engine: AsyncEngine,
) -> None:
    engine = sql_engine
    a, b, c = await _customers(engine, 3)
    await _record(
        engine,
        [
            CrmStatus(a, 2, APPLIED, "crm-a"),
            CrmStatus(a, 1, APPLIED, "crm-a"),  # late: lowers nothing
            CrmStatus(b, 1, APPLIED, "crm-b"),
            CrmStatus(b, 3, APPLIED, None),  # no CRM id: keeps crm-b
            CrmStatus(c, 2, DEAD, None),
            CrmStatus(c, 1, DEAD, None),
            CrmStatus(999_999, 1, APPLIED, "crm-gone"),  # a deleted customer: nothing
        ],
    )
    assert await _crm_columns(engine) == {
        a: ("crm-a", 2, None),
        b: ("crm-b", 3, None),
        c: (None, None, 2),
    }
    await _record(engine, [CrmStatus(a, 2, APPLIED, "crm-a"), CrmStatus(c, 1, DEAD, None)])
    assert (await _crm_columns(engine))[a] == ("crm-a", 2, None)  # read twice: unchanged
    assert (await _crm_columns(engine))[c] == (None, None, 2)
