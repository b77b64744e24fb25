"""Customers with requests in the outbox, written as the API writes them (the tests of
the delivery statements and of Kafka mode's confirmation start from them)."""

from typing import Any

from sqlalchemy import func, select
from support import eventually

from customer_service.columns import utc_now
from customer_service.customers.models import Customer
from customer_service.sync import outbox
from customer_service.sync.models import FailedRequest, Operation


async def customers_with_requests(
    sessionmaker: Any, count: int, updates: int = 0, name: str = "S"
) -> list[int]:
    """`count` customers (`name` and a number: the first name and the email), each with
    a pending CREATE and `updates` UPDATEs behind it; their ids."""
    async with sessionmaker() as session, session.begin():
        ids = []
        for n in range(count):
            now = utc_now()
            email = f"{name.lower()}{n}@example.com"
            customer = Customer(
                first_name=f"{name}{n}",
                last_name="Outbox",
                email=email,
                email_key=email,
                version=1,
                created_at=now,
                updated_at=now,
            )
            session.add(customer)
            await session.flush()
            await outbox.enqueue(session, customer, Operation.CREATE)
            for _ in range(updates):
                customer.version += 1
                await outbox.enqueue(session, customer, Operation.UPDATE)
            ids.append(customer.id)
        return ids


async def outbox_left(sessionmaker: Any) -> int:
    """Rows still in `failed_requests` (delivered ones are removed)."""
    async with sessionmaker() as session:
        left = await session.scalar(select(func.count()).select_from(FailedRequest))
    return int(left)


async def outbox_emptied(sessionmaker: Any, within: float = 20) -> None:
    """Wait until every row of `failed_requests` is gone (each delivered)."""

    async def empty() -> bool:
        return await outbox_left(sessionmaker) == 0

    await eventually(empty, within=within)
