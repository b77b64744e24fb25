"""Kafka mode hands the broker many more publishes at once than HTTP mode makes CRM calls:
each publish waits for the acknowledgement of the produce request that carries it, so
with HTTP's bound (64) a steady 389 writes/s on PostgreSQL outran what the publishes in
flight could carry and the outbox grew without end. Here every publish is held (a broker
slow to acknowledge) while the writes come: all of them end up waiting at once
(`connectors.kafka.PUBLISHES_IN_FLIGHT`)."""

import asyncio
from collections.abc import Callable, Sequence

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
        real_send = connector.send
        waiting = 0
        peak = 0
        release = asyncio.Event()

        async def slow(changes: Sequence[Change]) -> list[Outcome]:
            """Publishes whose acknowledgement is slow in coming."""
            nonlocal waiting, peak
            waiting += len(changes)
            peak = max(peak, waiting)
            await release.wait()
            waiting -= len(changes)
            outcomes: list[Outcome] = await real_send(changes)
            return outcomes

        connector.send = slow
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            for n in range(WRITES):
                body = {"firstName": "K", "lastName": f"F{n}", "email": f"k{n}@x.io"}
                assert (await client.post("/api/customers", json=body)).status_code == 201

            async def all_waiting_at_once() -> bool:
                return peak == WRITES

            await eventually(all_waiting_at_once)
            release.set()

            async def outbox_empty() -> bool:
                page = (await client.get("/api/failed-requests?limit=1")).json()
                return bool(page["total"] == 0)

            await eventually(outbox_empty, within=30)
    assert peak == WRITES > CRM_CALLS_IN_FLIGHT
