"""Shutdown with a CRM call in flight: past the grace period the call is cut short (never
a transaction), nothing is recorded for it, and its batch gives its claims back at once,
so the next process (or replica) takes the customer without waiting a whole lease."""

import asyncio
from collections.abc import Callable

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select
from support import CrmControl, eventually

from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.sync.models import FailedRequest, RequestStatus, SyncClaim

ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}


async def test_a_call_cut_short_at_shutdown_leaves_no_claim_and_records_nothing(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    # A long lease: a claim left behind would still hold at the test's end.
    settings = make_settings(claim_lease_seconds=60, crm_timeout_seconds=30)
    app = create_app(settings, run_scheduler=False)
    await crm_control.faults(latencyMs=20_000)
    async with LifespanManager(app):
        sessionmaker = app.state.sessionmaker

        async def claimed() -> bool:
            async with sessionmaker() as session:
                return bool(await session.scalar(select(func.count()).select_from(SyncClaim)))

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            customer = (await client.post("/api/customers", json=ADA)).json()
        await eventually(claimed)  # its delivery is calling the CRM
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(app.state.delivery.close(grace=0.2), timeout=5)
        assert loop.time() - started < 3
        async with sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(SyncClaim)) == 0
            row = (await session.scalars(select(FailedRequest))).one()
        assert (row.customer_id, row.status, row.attempts) == (
            customer["id"],
            RequestStatus.PENDING,
            0,
        )
