"""The retry job's passes running against each other: two ticks at once (the interval
job and the follow-up after a lease), a recovery pass starting in the middle, a close.
None reads another's unfinished task, and the follow-up after a lease always happens."""

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select
from support import CrmControl, deliveries_idle, eventually

from customer_service.app import create_app
from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.crm.client import CrmAnswer, CrmClient
from customer_service.sync.connectors.mock import MockConnector
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.models import FailedRequest, RequestStatus, SyncClaim
from customer_service.sync.retry import Urgency

ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}


async def _status(client: httpx.AsyncClient, customer_id: int) -> str:
    body = (await client.get(f"/api/customers/{customer_id}")).json()
    return str(body["crm"]["status"])


@pytest.mark.parametrize("recovery_after", [None, 0.0, 0.01, 0.05])
async def test_overlapping_ticks_and_a_recovery_pass_still_follow_up_after_the_lease(
    make_settings: Callable[..., Settings],
    crm_control: CrmControl,
    caplog: pytest.LogCaptureFixture,
    recovery_after: float | None,
) -> None:
    settings = make_settings(claim_lease_seconds=1.0)
    app = create_app(settings, run_scheduler=False)
    caplog.set_level(logging.ERROR)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            await crm_control.faults(down=True)
            ids = []
            for n in range(6):
                created = await client.post("/api/customers", json={**ADA, "email": f"o{n}@x.io"})
                ids.append(created.json()["id"])
            await eventually(lambda: _all_failed(client, ids))
            # A kicked delivery that went round again (a later write's kick) may still hold
            # a claim for its second look: wait until none does.
            await eventually(lambda: deliveries_idle(client))
            await crm_control.faults(down=False, latencyMs=30)
            # A crashed replica's claim on the first customer, lapsing in a second.
            async with app.state.sessionmaker() as session, session.begin():
                session.add(
                    SyncClaim(
                        customer_id=ids[0],
                        owner="crashed-replica",
                        expires_at=utc_now() + timedelta(seconds=0.8),
                    )
                )
            job = app.state.retry_job
            # Everything is in backoff (30 s): only operator-like passes would send; make
            # the ticks see work by pulling the schedule forward.
            async with app.state.sessionmaker() as session, session.begin():
                for row in (await session.scalars(select(FailedRequest))).all():
                    row.next_attempt_at = utc_now()
            ticks = [asyncio.create_task(job.tick()) for _ in range(2)]
            if recovery_after is not None:
                await asyncio.sleep(recovery_after)
                job.start_forced_pass()
            await asyncio.gather(*ticks)  # neither raises
            for customer_id in ids[1:]:
                await eventually(lambda c=customer_id: _is_synced(client, c))
            # Nobody ticks again: only the follow-up after the lease can deliver this one.
            await eventually(lambda: _is_synced(client, ids[0]), within=10)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _all_failed(client: httpx.AsyncClient, ids: list[int]) -> bool:
    return all([await _status(client, i) == "failed" for i in ids])


async def _is_synced(client: httpx.AsyncClient, customer_id: int) -> bool:
    return await _status(client, customer_id) == "synced"


async def test_any_exception_raised_by_the_transport_is_recorded_as_a_failure(
    make_settings: Callable[..., Settings],
) -> None:
    """An error inside the HTTP stack (httpcore once leaked an AttributeError when the CRM
    died mid-call) makes the request `failed` with the error, like any CRM trouble."""
    settings = make_settings(sync_enabled=False)
    app = create_app(settings, run_scheduler=False)

    class Broken(CrmClient):
        async def _call(self, *args: Any, **kwargs: Any) -> CrmAnswer:
            raise AttributeError("'NoneType' object has no attribute 'read'")

    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            customer = (await client.post("/api/customers", json=ADA)).json()
        connector = MockConnector(settings)
        connector.client = Broken(settings)
        engine = DeliveryEngine(app.state.sessionmaker, connector, settings)
        counts = (await engine.deliver({customer["id"]: Urgency.DUE})).counts
        assert (counts.attempted, counts.failed) == (1, 1)
        async with app.state.sessionmaker() as session:
            row = (await session.scalars(select(FailedRequest))).one()
            claims = await session.scalar(select(func.count()).select_from(SyncClaim))
        assert row.status == RequestStatus.FAILED
        assert row.attempts == 1
        assert row.last_error is not None and "AttributeError" in row.last_error
        assert claims == 0  # the claim was released
