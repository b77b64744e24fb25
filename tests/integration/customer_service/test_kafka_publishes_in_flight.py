"""Kafka mode keeps many more publishes waiting for the broker than HTTP mode keeps CRM
calls: each waits for the acknowledgement of the produce request that carries it, so with
HTTP's bound (64) a steady 389 writes/s on PostgreSQL outran what the publishes in flight
could carry and the outbox grew without end (`connectors.kafka.PUBLISHES_IN_FLIGHT`)."""

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from kafka_support import Broker, Topics
from support import eventually

from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.sync.connector import Change
from customer_service.sync.connectors.mock import CALLS_IN_FLIGHT as CRM_CALLS_IN_FLIGHT
from customer_service.sync.outcome import Outcome

WRITES = CRM_CALLS_IN_FLIGHT + 36


async def test_kafka_mode_has_more_publishes_in_flight_than_http_has_crm_calls(
    make_settings: Callable[..., Settings], kafka_broker: Broker
) -> None:
    settings = make_settings(**Topics.fresh().service_settings(kafka_broker))
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        connector = app.state.delivery.connector
        real_publish = connector._publish
        waiting = 0
        peak = 0
        release = asyncio.Event()

        async def held(producer: Any, change: Change) -> Outcome:
            """A publish whose acknowledgement is slow in coming."""
            nonlocal waiting, peak
            waiting += 1
            peak = max(peak, waiting)
            await release.wait()
            waiting -= 1
            outcome: Outcome = await real_publish(producer, change)
            return outcome

        connector._publish = held
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            for n in range(WRITES):
                body = {"firstName": "K", "lastName": f"F{n}", "email": f"k{n}@x.io"}
                assert (await client.post("/api/customers", json=body)).status_code == 201

            async def all_waiting_at_once() -> int | None:
                return peak if peak == WRITES else None

            await eventually(all_waiting_at_once)
            release.set()

            async def outbox_empty() -> bool:
                page = (await client.get("/api/failed-requests?limit=1")).json()
                return bool(page["total"] == 0)

            await eventually(outbox_empty, within=30)
    assert peak == WRITES > CRM_CALLS_IN_FLIGHT
