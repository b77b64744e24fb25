"""The drain's backlog, written straight into a customer-service database.

Creating 20,000 customers through the API would take minutes; this writes what the API's
transaction would write (`customer_service.sync.outbox`): a `customers` row and a pending
CREATE in `failed_requests`, with the CRM body as payload and a fresh `Idempotency-Key`.
"""

from __future__ import annotations

import uuid
from typing import Any


async def seed_backlog(url: str, count: int) -> None:
    """Write `count` customers and their pending CREATE requests straight into the
    database, as the API's transaction would (see `customer_service.sync.outbox`)."""
    from sqlalchemy import insert, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from customer_service.columns import utc_now
    from customer_service.crm.mapper import snapshot
    from customer_service.customers.models import Customer
    from customer_service.sync.models import FailedRequest, Operation, RequestStatus

    now = utc_now()
    customers: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    for number in range(1, count + 1):
        email = f"drain-{number}@example.com"
        row: dict[str, Any] = {
            "id": number,
            "first_name": f"Drain{number}",
            "last_name": "Backlog",
            "email": email,
            "email_key": email.lower(),
            "phone": "+44 20 7946 0000",
            "street": f"{number} Bench Street",
            "city": "London",
            "state": None,
            "postal_code": "SW1Y 4JH",
            "country": "GB",
            "version": 1,
            "crm_id": None,
            "crm_synced_version": None,
            "created_at": now,
            "updated_at": now,
        }
        customers.append(row)
        payload = snapshot(Customer(**row))
        requests.append(
            {
                "customer_id": number,
                "operation": Operation.CREATE.value,
                "status": RequestStatus.PENDING.value,
                "attempts": 0,
                "last_error": None,
                "next_attempt_at": now,
                "version": 1,
                "payload": payload,
                "crm_id": None,
                "idempotency_key": str(uuid.uuid4()),
                "created_at": now,
                "updated_at": now,
            }
        )
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for start in range(0, count, 2000):
                await connection.execute(insert(Customer), customers[start : start + 2000])
            for start in range(0, count, 2000):
                await connection.execute(insert(FailedRequest), requests[start : start + 2000])
            if engine.dialect.name == "postgresql":
                # Explicit ids do not move the sequence: later API writes must not reuse them.
                await connection.execute(
                    text("SELECT setval(pg_get_serial_sequence('customers', 'id'), :n)"),
                    {"n": count},
                )
    finally:
        await engine.dispose()
