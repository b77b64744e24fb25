"""A periodic retry pass leaves a fresh, untried request to the delivery its write kicked,
and takes it once it is a claim's lease old (the write's replica may have crashed right
after its commit). The first pass of a process takes everything."""

from collections.abc import Callable

import httpx
from asgi_lifespan import LifespanManager
from support import CrmControl, eventually

from customer_service.app import create_app
from customer_service.config import Settings

LEASE_SECONDS = 1.0


async def _status(client: httpx.AsyncClient, customer_id: int) -> str:
    return str((await client.get(f"/api/customers/{customer_id}")).json()["crm"]["status"])


async def test_a_periodic_pass_leaves_fresh_untried_requests_for_a_lease(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    # No dispatcher (sync off for kicks): the requests wait for the job's passes alone,
    # as those of a replica that crashed right after its commits would.
    settings = make_settings(claim_lease_seconds=LEASE_SECONDS, sync_enabled=False)
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            job = app.state.retry_job
            body = {"firstName": "F", "lastName": "Resh", "email": "first@example.com"}
            first = (await client.post("/api/customers", json=body)).json()["id"]
            await job.tick()  # the first pass: takes the fresh request too
            assert await _status(client, first) == "synced"

            body["email"] = "second@example.com"
            second = (await client.post("/api/customers", json=body)).json()["id"]
            await job.tick()  # a later pass: the request is fresh and untried
            assert await _status(client, second) == "pending"
            assert await crm_control.requests(second) == []

            async def taken_once_a_lease_old() -> bool:
                await job.tick()
                return await _status(client, second) == "synced"

            await eventually(taken_once_a_lease_old, within=10 * LEASE_SECONDS)
            assert [r["status"] for r in await crm_control.requests(second)] == [201]
