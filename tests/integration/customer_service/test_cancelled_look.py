"""A delivery cancelled while its look (claim and read) runs gives the claim back: the
look's group commits the claim all the same, and before this was mended the customer
waited a whole lease with nobody delivering it (a shutdown's cancelled deliveries left
their customers to the next process only after `CLAIM_LEASE_SECONDS`)."""

import asyncio
from collections.abc import Callable

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select
from support import CrmControl, eventually

from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.sync.delivery import PassCounts
from customer_service.sync.models import SyncClaim

ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}


async def test_a_delivery_cancelled_during_its_look_leaves_no_claim_behind(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    # An API-only process: the write kicks no delivery; the test runs them itself. The
    # lease is long, so a claim left behind would still hold at the test's end.
    settings = make_settings(sync_enabled=False, claim_lease_seconds=60)
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            customer = (await client.post("/api/customers", json=ADA)).json()
        deliverer = app.state.deliverer
        for _ in range(20):  # the cancellation lands at a different instant each time
            delivery = asyncio.create_task(deliverer.deliver_customer(customer["id"]))
            await asyncio.sleep(0)  # its look is asked for, and its group under way
            delivery.cancel()
            await asyncio.gather(delivery, return_exceptions=True)
            if delivery.cancelled():
                break
        assert delivery.cancelled(), "no cancellation landed during a look"

        async def free_and_delivered() -> PassCounts | None:
            # Busy while the abandoned look's claim stands (its group may still be
            # committing it); free once it was given back, a lease early.
            counts: PassCounts = await deliverer.deliver_customer(customer["id"])
            return counts if not counts.busy else None

        counts = await eventually(free_and_delivered, within=5)
        assert counts.delivered == 1
        async with app.state.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(SyncClaim)) == 0
    assert await crm_control.records(customer["id"])
