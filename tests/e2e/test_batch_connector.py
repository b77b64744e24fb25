"""`CRM_BATCH_SIZE` above 1 against the real CRM mock: creates and updates go through its
batch upsert, deletes through its batch delete, one call for many customers, each record
settled on its own (a record failed by the mock's `errorRate` is retried alone, the
others stay delivered), with every customer in order and no duplicate record."""

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from support import CrmControl, eventually
from support import deliveries_idle as _idle

from customer_service.app import create_app
from customer_service.config import Settings

CUSTOMERS = 60
BATCH = "/api/crm/customers/batch"


async def _all(client: httpx.AsyncClient, ids: list[int], status: str) -> bool:
    bodies = await asyncio.gather(*(client.get(f"/api/customers/{i}") for i in ids))
    return all(b.json()["crm"]["status"] == status for b in bodies)


async def _write(client: httpx.AsyncClient, n: int) -> dict[str, Any]:
    body = {"firstName": "B", "lastName": "v1", "email": f"batch{n}@example.com"}
    created = (await client.post("/api/customers", json=body)).json()
    body["lastName"] = "v2"
    updated = await client.put(f"/api/customers/{created['id']}", json=body)
    assert updated.status_code == 200, updated.text
    result: dict[str, Any] = updated.json()
    return result


async def test_batches_reach_the_mock_in_few_calls_each_record_on_its_own(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    # API-only while writing, so the whole backlog waits for one pass in batches.
    settings = make_settings(crm_batch_size=100, sync_enabled=False)
    writer = create_app(settings, run_scheduler=False)
    async with LifespanManager(writer):
        transport = httpx.ASGITransport(app=writer)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            written = [await _write(client, n) for n in range(CUSTOMERS)]
    ids = [customer["id"] for customer in written]
    await crm_control.faults(errorRate=0.2)
    app = create_app(settings.model_copy(update={"sync_enabled": True}), run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:

            async def delivered() -> bool:
                await client.post("/api/failed-requests/retry")  # an operator pass, batched
                return await _all(client, ids, "synced")

            await eventually(delivered, within=60, interval=0.2)
            await crm_control.faults(errorRate=0.0)
            records = {r["externalId"]: r for r in await crm_control.records()}
            assert len(records) == CUSTOMERS  # no duplicate
            assert {records[str(i)]["lastName"] for i in ids} == {"v2"}
            log = await crm_control.requests()
            calls = Counter(e["idempotencyKey"] for e in log if e["path"] == BATCH)
            # 60 customers, two requests each, coalesced: far fewer calls than records.
            assert 0 < len(calls) < CUSTOMERS // 2, len(calls)
            assert max(calls.values()) > 1  # records shared a call
            failed = [e for e in log if e["path"] == BATCH and e["status"] == 503]
            assert failed, "errorRate failed no record: the test covers nothing"
            # Deleted while the CRM is down, so the deletes wait for one batched pass.
            await crm_control.faults(down=True)
            for customer_id in ids:
                assert (await client.delete(f"/api/customers/{customer_id}")).status_code == 204
            await eventually(lambda: _idle(client))
            await crm_control.faults(down=False)

            async def gone() -> bool:
                await client.post("/api/failed-requests/retry")
                return not await crm_control.records()

            await eventually(gone, within=60, interval=0.2)
            deletes = [
                e
                for e in await crm_control.requests()
                if e["path"] == BATCH + "/delete" and e["status"] < 300
            ]
            assert 0 < len({e["idempotencyKey"] for e in deletes}) < CUSTOMERS // 2
