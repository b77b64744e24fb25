"""End-to-end confirmation in Kafka mode, on the real broker (Tansu, memory storage): a
version the broker took stays the service's until the CRM reports it, so a broker
restarted empty while 50 customers' events were unapplied loses nothing. Every customer
converges within KAFKA_CONFIRM_SECONDS (plus a few seconds) of the CRM's consumer
running again, each event published again with its own eventId, and the CRM holds one
record per customer."""

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from kafka_support import Broker, Topics, consumers, read_topic, running_broker
from support import CrmControl, LiveServer, crm_view, eventually, expected_crm_record

from customer_service.app import create_app
from customer_service.config import Settings

CONFIRM_SECONDS = 3.0
CUSTOMERS = 50


def _settings(database_url: str, crm: LiveServer, broker: Broker, topics: Topics) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "crm_base_url": crm.url,
        "retry_interval_seconds": 1,
        "recovery_probe_seconds": 0.2,
        "retry_backoff_base_seconds": 0.2,
        "retry_backoff_max_seconds": 1,
        "retry_max_attempts": 1000,
        "crm_timeout_seconds": 1,
        "kafka_confirm_seconds": CONFIRM_SECONDS,
        **topics.service_settings(broker),
    }
    return Settings(**values)


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


async def _customers(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    page = (await client.get("/api/customers", params={"limit": 500})).json()
    items: list[dict[str, Any]] = page["items"]
    return items


async def _metric(client: httpx.AsyncClient, name: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_broker_restarted_empty_with_50_customers_unapplied_loses_nothing(
    database_url: str, crm: LiveServer, crm_control: CrmControl, tmp_path: Path
) -> None:
    topics = Topics.fresh()
    with running_broker() as broker:
        env = topics.crm_env(broker, f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}")
        app = create_app(_settings(database_url, crm, broker, topics))
        async with LifespanManager(app), _client(app) as client:
            # The CRM's consumer is not running: nothing is applied.
            ids = []
            for n in range(CUSTOMERS):
                body = {"firstName": "C1", "lastName": "Confirm", "email": f"c{n}@example.com"}
                created = await client.post("/api/customers", json=body)
                assert created.status_code == 201, created.text
                ids.append(created.json()["id"])
            for n, customer_id in enumerate(ids):
                body = {"firstName": "C2", "lastName": "Confirm", "email": f"c{n}@example.com"}
                updated = await client.put(f"/api/customers/{customer_id}", json=body)
                assert updated.status_code == 200, updated.text

            async def all_published() -> bool:
                page = (await client.get("/api/failed-requests")).json()
                return bool(page["total"] == 0)

            await eventually(all_published, within=30)
            # Each customer's create, and its update (never coalesced with a create).
            events = await read_topic(broker, topics.events, at_least=2 * CUSTOMERS)
            event_ids = {(int(m.key), _body(m)["version"]): _body(m)["eventId"] for m in events}
            assert len(event_ids) == 2 * CUSTOMERS

            broker.kill()
            broker.start()  # the same port, memory storage: every event is gone
            # Truthful meanwhile: nothing failed (no failed request), every customer is
            # pending, and the dashboard's figure of what awaits the CRM says so.
            assert all(c["crm"]["status"] == "pending" for c in await _customers(client))
            assert (await client.get("/api/failed-requests")).json()["total"] == 0
            awaiting = await _metric(client, "crm_sync_kafka_unconfirmed_events")
            assert awaiting == 2 * CUSTOMERS
            dashboard = (await client.get("/dashboard")).text
            assert f'id="count-awaiting">{2 * CUSTOMERS}<' in dashboard
            assert 'id="count-all">0<' in dashboard

            async with consumers(env):
                started = time.monotonic()

                async def all_synced() -> bool:
                    customers = await _customers(client)
                    return len(customers) == CUSTOMERS and all(
                        c["crm"]["status"] == "synced" and c["crm"]["syncedVersion"] == 2
                        for c in customers
                    )

                await eventually(all_synced, within=CONFIRM_SECONDS + 12)
                converged = time.monotonic() - started
            assert converged <= CONFIRM_SECONDS + 12, converged

            # No duplicate record, each equal to its customer, with the customer's CRM id.
            records = await crm_control.records()
            assert sorted(r["externalId"] for r in records) == sorted(str(i) for i in ids)
            by_external_id = {r["externalId"]: r for r in records}
            for customer in await _customers(client):
                record = by_external_id[str(customer["id"])]
                assert crm_view(record) == expected_crm_record(customer)
                assert customer["crm"]["id"] == record["id"]
            # What the CRM applied was the events published before, again: same eventIds,
            # each customer's in order.
            applied: dict[int, list[int]] = defaultdict(list)
            for entry in await crm_control.requests():
                if entry["method"] != "GET" and entry["status"] < 300:
                    customer_id, version = int(entry["externalId"]), entry["body"]["version"]
                    assert entry["idempotencyKey"] == event_ids[(customer_id, version)]
                    applied[customer_id].append(version)
            assert set(applied) == set(ids)
            for customer_id, versions in applied.items():
                assert versions == sorted(set(versions)), (customer_id, versions)
                assert versions[-1] == 2

            async def nothing_awaits() -> bool:
                return await _metric(client, "crm_sync_kafka_unconfirmed_events") == 0

            await eventually(nothing_awaits)


def _body(message: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(message.value)
    return body
