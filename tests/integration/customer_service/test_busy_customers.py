"""A kick that finds its customer claimed elsewhere is not left for the next tick.

The race it covers, across replicas: replica A's delivery reads the customer's queue and
is about to give its claim back; replica B commits a new request for that customer and
its kick finds the claim still A's. A releases without having seen the request. Here the
"other replica" is a claim taken by hand and given back by hand, and no periodic pass
runs: only B's engine looking again can deliver the request.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import delete
from support import CrmControl, eventually

from customer_service.app import create_app
from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.sync import repository
from customer_service.sync.engine import BatchResult, DeliveryEngine
from customer_service.sync.models import SyncClaim

OTHER = "other-replica:1"


@dataclass
class Looks:
    busy: int = 0


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    app = create_app(make_settings(claim_lease_seconds=30), run_scheduler=False)
    async with LifespanManager(app):
        yield app


def count_busy_looks(engine: DeliveryEngine, monkeypatch: pytest.MonkeyPatch) -> Looks:
    looks = Looks()
    real = engine.finish_batch

    async def spy(*args: Any, **kwargs: Any) -> BatchResult:
        result = await real(*args, **kwargs)
        looks.busy += len(result.busy)
        return result

    monkeypatch.setattr(engine, "finish_batch", spy)
    return looks


async def _claim_elsewhere(app: FastAPI, customer_id: int) -> None:
    async with app.state.sessionmaker() as session, session.begin():
        assert await repository.claim(session, [customer_id], OTHER, utc_now(), 30.0)


async def _give_back(app: FastAPI, customer_id: int) -> None:
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(delete(SyncClaim).where(SyncClaim.customer_id == customer_id))


async def _synced(client: httpx.AsyncClient, cid: int, version: int) -> bool:
    crm = (await client.get(f"/api/customers/{cid}")).json()["crm"]
    return bool(crm["status"] == "synced" and crm["syncedVersion"] == version)


async def _update_while_held_elsewhere(
    app: FastAPI, client: httpx.AsyncClient, email: str, monkeypatch: pytest.MonkeyPatch
) -> int:
    """A synced customer, claimed by the "other replica", then updated here; returns once
    this process's kick has found the claim taken."""
    body = {"firstName": "B", "lastName": "v1", "email": email}
    cid: int = (await client.post("/api/customers", json=body)).json()["id"]
    await eventually(lambda: _synced(client, cid, 1), within=10)
    looks = count_busy_looks(app.state.delivery, monkeypatch)
    await _claim_elsewhere(app, cid)
    body["lastName"] = "v2"
    assert (await client.put(f"/api/customers/{cid}", json=body)).status_code == 200

    async def found_busy() -> bool:
        return looks.busy >= 1

    await eventually(found_busy, within=10)
    return cid


async def test_a_kick_that_found_the_customer_held_looks_again_once_it_is_given_back(
    app: FastAPI, crm_control: CrmControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
        cid = await _update_while_held_elsewhere(app, client, "busy@example.com", monkeypatch)
        await _give_back(app, cid)  # without having delivered the update
        await eventually(lambda: _synced(client, cid, 2), within=10)
        [record] = await crm_control.records(cid)
        assert record["lastName"] == "v2"


async def test_shutdown_does_not_wait_for_a_customer_held_elsewhere(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
        await _update_while_held_elsewhere(app, client, "held@example.com", monkeypatch)
        engine = app.state.delivery
        assert engine.in_flight == 1  # waiting to look again
        # The grace is long; the wait to look again ends at once, without it.
        await asyncio.wait_for(engine.close(grace=60), timeout=5)
        assert engine.in_flight == 0
