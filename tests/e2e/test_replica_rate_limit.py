"""Guarantee 10: on PostgreSQL `CRM_MAX_REQUESTS_PER_SECOND` is the limit of all replicas
together. Three `customer-service serve` processes drain one backlog with a limit of 30:
no second of the CRM's request log holds more than 33 calls (a call leaving at the end
of one second may be logged in the next), where each replica keeping to the whole limit
made it about 90."""

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from datetime import datetime
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

CUSTOMERS = 300
LIMIT = 30


async def _write_backlog(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"sync_enabled": False}), run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            for n in range(CUSTOMERS):
                body = {"firstName": "R", "lastName": f"{n}", "email": f"rl{n}@example.com"}
                assert (await client.post("/api/customers", json=body)).status_code == 201


def _at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["receivedAt"].replace("Z", "+00:00"))


async def test_three_replicas_keep_to_one_limit_together(
    postgres_database: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    await reset_postgres(postgres_database)
    await _write_backlog(Settings(database_url=postgres_database, crm_base_url=crm.url))
    ports = [free_port() for _ in range(3)]
    env = {"CRM_MAX_REQUESTS_PER_SECOND": str(LIMIT), "RETRY_INTERVAL_SECONDS": "2"}
    async with AsyncExitStack() as stack:
        await asyncio.gather(
            *(
                stack.enter_async_context(service_process(postgres_database, crm.url, p, **env))
                for p in ports
            )
        )
        http = await stack.enter_async_context(loopback_client(f"http://127.0.0.1:{ports[0]}"))

        async def drained() -> bool:
            page = (await http.get("/api/failed-requests", params={"limit": 1})).json()
            return bool(page["total"] == 0)

        await eventually(drained, within=120, interval=0.5)
    log = await crm_control.requests()
    per_second = Counter(_at(entry).replace(microsecond=0) for entry in log)
    assert sum(1 for e in log if e["method"] == "POST" and e["status"] == 201) == CUSTOMERS
    assert max(per_second.values()) <= LIMIT * 1.1, sorted(per_second.values())[-5:]
    # The three together did keep near the limit (not one replica's share of it).
    busiest = sorted(per_second.values())[-5:]
    assert min(busiest) >= LIMIT * 0.6, busiest
