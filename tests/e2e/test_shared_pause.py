"""Guarantee 7 across replicas, on PostgreSQL: a 429's pause holds the calls of every
replica, not only of the one that got it (`crm.shared_ceiling.SharedPause`). Replica A
overruns a CRM allowing 5 calls a second and is told to wait 3 s; replica B, which got no
429 itself, has writes to deliver a second later: none of its calls reaches the CRM
before the pause is over."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta

import httpx
from asgi_lifespan import LifespanManager
from support import CrmControl, LiveServer, eventually, reset_postgres

from customer_service.app import create_app
from customer_service.config import Settings

PAUSE = 3


@asynccontextmanager
async def _replica(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            yield client


def _at(entry: dict[str, str]) -> datetime:
    return datetime.fromisoformat(entry["receivedAt"].replace("Z", "+00:00"))


async def test_a_429_pauses_the_other_replicas_too(
    postgres_database: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    await reset_postgres(postgres_database)
    settings = Settings(database_url=postgres_database, crm_base_url=crm.url)
    await crm_control.faults(rateLimitPerSecond=5, retryAfterSeconds=PAUSE)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(_replica(settings))
        b = await stack.enter_async_context(_replica(settings))
        for n in range(20):
            body = {"firstName": "A", "lastName": f"{n}", "email": f"a{n}@example.com"}
            assert (await a.post("/api/customers", json=body)).status_code == 201

        async def first_429() -> datetime | None:
            refused = [e for e in await crm_control.requests() if e["status"] == 429]
            return min((_at(e) for e in refused), default=None)

        refused_at = await eventually(first_429)
        await asyncio.sleep(1.2)  # B's writes come in a later second of the CRM's
        for n in range(10):
            body = {"firstName": "B", "lastName": f"{n}", "email": f"b{n}@example.com"}
            assert (await b.post("/api/customers", json=body)).status_code == 201
        await asyncio.sleep(PAUSE)  # what should happen in the pause has happened
    window = (refused_at + timedelta(seconds=1), refused_at + timedelta(seconds=PAUSE - 0.2))
    during = [e for e in await crm_control.requests() if window[0] < _at(e) < window[1]]
    assert during == [], (refused_at, [(e["method"], e["status"], e["receivedAt"]) for e in during])
