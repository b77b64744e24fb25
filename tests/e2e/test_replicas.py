"""Guarantee 6 at scale: three `customer-service serve` processes on one PostgreSQL
drain one backlog together. Every request reaches the CRM once, each customer's in order,
and each process takes a share. (How much faster three drain than one is a speed figure:
`make bench` measures it, not this test.)"""

import asyncio
import os
import re
from collections import defaultdict
from contextlib import AsyncExitStack
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from support import (
    CrmControl,
    LiveServer,
    eventually,
    free_port,
    loopback_client,
    reset_postgres,
    service_process,
)

from customer_service.app import create_app
from customer_service.config import Settings

CUSTOMERS = int(os.environ.get("CRM_SYNC_TEST_REPLICA_CUSTOMERS", "1000"))
UPDATES = 4  # with the create: five requests a customer


async def _write_backlog(settings: Settings) -> list[dict[str, Any]]:
    """CUSTOMERS customers with UPDATES updates each, written by an API-only process."""
    app = create_app(settings.model_copy(update={"sync_enabled": False}), run_scheduler=False)
    last: list[dict[str, Any]] = []
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:

            async def one(n: int) -> dict[str, Any]:
                body = {"firstName": "R", "lastName": "v1", "email": f"replica{n}@example.com"}
                customer = (await client.post("/api/customers", json=body)).json()
                for version in range(2, UPDATES + 2):
                    body["lastName"] = f"v{version}"
                    response = await client.put(f"/api/customers/{customer['id']}", json=body)
                    assert response.status_code == 200, response.text
                    customer = response.json()
                return customer

            for start in range(0, CUSTOMERS, 50):
                batch = range(start, min(start + 50, CUSTOMERS))
                last.extend(await asyncio.gather(*(one(n) for n in batch)))
            total = (await client.get("/api/failed-requests", params={"limit": 1})).json()
            assert total["total"] == CUSTOMERS * (UPDATES + 1)
    return last


async def _delivered(http: httpx.AsyncClient) -> float:
    metrics = (await http.get("/metrics")).text
    found = re.search(r'^crm_sync_deliveries_total\{outcome="delivered"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


async def test_three_replicas_drain_one_backlog_once_each_and_in_order(
    postgres_database: str,
    crm: LiveServer,
    crm_control: CrmControl,
) -> None:
    await reset_postgres(postgres_database)
    settings = Settings(database_url=postgres_database, crm_base_url=crm.url)
    written = await _write_backlog(settings)
    ports = [free_port() for _ in range(3)]
    env = {"RETRY_INTERVAL_SECONDS": "2", "CRM_TIMEOUT_SECONDS": "10"}
    async with AsyncExitStack() as stack:
        # Started together, so each finds the backlog still there to share.
        await asyncio.gather(
            *(
                stack.enter_async_context(service_process(postgres_database, crm.url, p, **env))
                for p in ports
            )
        )
        clients = [
            await stack.enter_async_context(loopback_client(f"http://127.0.0.1:{p}")) for p in ports
        ]

        async def drained() -> bool:
            page = (await clients[0].get("/api/failed-requests", params={"limit": 1})).json()
            return bool(page["total"] == 0)

        await eventually(drained, within=240, interval=0.5)
        shares = [await _delivered(http) for http in clients]
    assert all(share > 0 for share in shares), shares  # each process took a share

    log = await crm_control.requests()
    writes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in log:
        if entry["method"] in ("POST", "PUT") and entry["status"] < 300:
            writes[entry["externalId"]].append(entry)
    keys = [e["idempotencyKey"] for entries in writes.values() for e in entries]
    assert len(keys) == len(set(keys)), "a request reached the CRM twice"
    # Every delivery the processes counted is one of those calls, and no call is missing
    # from their counts: nothing was delivered twice, by two processes or one.
    assert sum(shares) == len(keys), (shares, len(keys))
    records = {r["externalId"]: r for r in await _all_records(crm_control)}
    assert len(records) == CUSTOMERS  # no duplicate records
    for customer in written:
        calls = writes[str(customer["id"])]
        assert calls[0]["method"] == "POST", calls
        names = [int(c["body"]["lastName"][1:]) for c in calls]
        assert names == sorted(names), f"customer {customer['id']} out of order: {names}"
        assert records[str(customer["id"])]["lastName"] == customer["lastName"]


async def _all_records(crm: CrmControl) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    while True:
        params = {"limit": 500, "offset": len(records)}
        page = (await crm.http.get("/api/crm/customers", params=params)).json()
        records.extend(page["items"])
        if len(records) >= page["total"]:
            return records
