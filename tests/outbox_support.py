"""Customers with requests in the outbox, written as the API writes them (the tests of
the delivery statements and of Kafka mode's confirmation start from them)."""

from typing import Any

from customer_service.columns import utc_now
from customer_service.customers.models import Customer
from customer_service.sync import outbox
from customer_service.sync.models import Operation


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
