"""The claim's heartbeat: a CRM call longer than the lease keeps its batch's claims, and
a renewal still in flight when its call ends never takes a claim back.

The second is the race CI once hit: the heartbeat is stopped while its renewal's
statement runs, the batch gives its claims back, and then the renewal lands. Had the
renewal been a claim (insert or take over), the customer would be held for a whole lease
with nobody delivering it. Now the batch waits for the renewal before it settles."""

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from support import CrmControl, eventually

from customer_service.app import create_app
from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.sync import repository
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.models import SyncClaim
from customer_service.sync.retry import Urgency

LEASE = 0.6
ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    # No kick and no scheduler: the test drives the one delivery itself.
    settings = make_settings(claim_lease_seconds=LEASE, sync_enabled=False, crm_timeout_seconds=10)
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        yield app


async def _pending_customer(app: FastAPI) -> int:
    """A customer whose create waits in the outbox (this process does not kick)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
        created = await client.post("/api/customers", json=ADA)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


async def _claims(app: FastAPI) -> list[SyncClaim]:
    async with app.state.sessionmaker() as session:
        return list((await session.scalars(select(SyncClaim))).all())


async def test_a_call_longer_than_the_lease_keeps_the_claim(
    app: FastAPI, crm_control: CrmControl
) -> None:
    customer_id = await _pending_customer(app)
    engine: DeliveryEngine = app.state.delivery
    await crm_control.faults(latencyMs=int(4 * LEASE * 1000))
    delivery = asyncio.create_task(engine.deliver({customer_id: Urgency.DUE}))
    await eventually(lambda: _has_claim(app))
    await asyncio.sleep(2 * LEASE)  # twice the lease into the call
    assert not delivery.done()
    async with app.state.sessionmaker() as session, session.begin():
        taken = await repository.claim(session, [customer_id], "other-replica", utc_now(), LEASE)
    assert not taken, "the claim lapsed while its delivery was still calling the CRM"
    counts = (await delivery).counts
    assert (counts.attempted, counts.delivered) == (1, 1)
    assert await _claims(app) == []


async def _has_claim(app: FastAPI) -> bool:
    return bool(await _claims(app))


async def test_a_renewal_landing_after_the_release_does_not_take_the_claim_back(
    app: FastAPI, crm_control: CrmControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer_id = await _pending_customer(app)
    engine: DeliveryEngine = app.state.delivery
    renewing = asyncio.Event()
    answered = asyncio.Event()
    real_renew = repository.renew

    async def held_renew(session: AsyncSession, owner: str, now: datetime, lease: float) -> int:
        renewing.set()
        await answered.wait()  # still in flight when the CRM's answer arrives
        await asyncio.sleep(0.1)
        return await real_renew(session, owner, utc_now(), lease)

    async def seen_answer() -> bool:
        return any(r["status"] == 201 for r in await crm_control.requests(customer_id))

    async def watch() -> None:
        await eventually(seen_answer)
        answered.set()

    monkeypatch.setattr(repository, "renew", held_renew)
    # The call outlasts a third of the lease, so the heartbeat sends a renewal.
    await crm_control.faults(latencyMs=int(LEASE * 1000))
    watcher = asyncio.create_task(watch())
    counts = (await engine.deliver({customer_id: Urgency.DUE})).counts
    await watcher
    assert counts.delivered == 1
    assert renewing.is_set(), "no renewal was sent: the test covers nothing"
    assert await _claims(app) == [], "a late renewal took the claim back"
