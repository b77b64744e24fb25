"""End-to-end confirmation in Kafka mode, on the real broker (Tansu, memory storage): a
version the broker took stays the service's until the CRM reports it, so a broker
restarted empty while 50 customers' events were unapplied loses nothing. Every customer
converges within KAFKA_CONFIRM_SECONDS (plus a few seconds) of the CRM's consumer
running again, each event published again with its own eventId, and the CRM holds one
record per customer."""

import json
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from kafka_support import Broker, Topics, consumers, read_topic, running_broker
from sqlalchemy import func, select
from support import (
    CrmControl,
    LiveServer,
    crm_view,
    eventually,
    expected_crm_record,
    free_port,
    loopback_client,
    reset_postgres,
    service_process,
)

from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.db import create_engine
from customer_service.sync.models import UnconfirmedEvent

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

            await _assert_one_record_each(client, crm_control, ids)
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


async def _assert_one_record_each(
    client: httpx.AsyncClient, crm_control: CrmControl, ids: list[int]
) -> None:
    """No duplicate CRM record: one per customer, equal to it, with its CRM id."""
    records = await crm_control.records()
    assert sorted(r["externalId"] for r in records) == sorted(str(i) for i in ids)
    by_external_id = {r["externalId"]: r for r in records}
    for customer in await _customers(client):
        record = by_external_id[str(customer["id"])]
        assert crm_view(record) == expected_crm_record(customer)
        assert customer["crm"]["id"] == record["id"]


async def test_statuses_a_restarted_broker_lost_come_again_from_the_duplicates(
    database_url: str, crm: LiveServer, crm_control: CrmControl, tmp_path: Path
) -> None:
    """The CRM applied every event, but the broker restarted empty before the service read
    the statuses: the versions go again, the CRM skips them as duplicates (creating
    nothing twice) and reports them applied again, and every customer is synced."""
    topics = Topics.fresh()
    count = 20
    with running_broker() as broker:
        env = topics.crm_env(broker, f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}")
        settings = _settings(database_url, crm, broker, topics)
        app = create_app(settings)
        async with LifespanManager(app), _client(app) as client:
            for n in range(count):
                body = {"firstName": "S1", "lastName": "Status", "email": f"s{n}@example.com"}
                assert (await client.post("/api/customers", json=body)).status_code == 201

            async def all_published() -> bool:
                page = (await client.get("/api/failed-requests")).json()
                return bool(page["total"] == 0)

            await eventually(all_published, within=30)
        # The service is stopped: nobody reads the statuses the CRM's consumer now writes.
        async with consumers(env):

            async def all_applied() -> bool:
                return len(await crm_control.records()) == count

            await eventually(all_applied, within=30)
        broker.kill()
        broker.start()  # the statuses are gone with the events

        app = create_app(settings)
        async with LifespanManager(app), _client(app) as client:
            assert all(c["crm"]["status"] == "pending" for c in await _customers(client))
            async with consumers(env):

                async def all_synced() -> bool:
                    customers = await _customers(client)
                    return len(customers) == count and all(
                        c["crm"]["status"] == "synced" and c["crm"]["syncedVersion"] == 1
                        for c in customers
                    )

                await eventually(all_synced, within=CONFIRM_SECONDS + 12)
            ids = [c["id"] for c in await _customers(client)]
            await _assert_one_record_each(client, crm_control, ids)
            log = await crm_control.requests()
            created = [e["externalId"] for e in log if e["method"] == "POST" and e["status"] == 201]
            assert sorted(created) == sorted(str(i) for i in ids)  # each created once
            assert sum(1 for e in log if e["status"] == 409) >= count  # the duplicates


async def test_two_replicas_one_killed_while_publishing_again_still_lose_nothing(
    postgres_database: str, crm: LiveServer, crm_control: CrmControl, tmp_path: Path
) -> None:
    """Two service processes on one PostgreSQL; after the broker restarted empty, one is
    SIGKILLed once they have started publishing the lost versions again (its claims, and
    its share of the status topic, go to the other)."""
    await reset_postgres(postgres_database)
    topics = Topics.fresh()
    with running_broker() as broker:
        env = {
            "SYNC_MODE": "kafka",
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KAFKA_TOPIC": topics.events,
            "KAFKA_STATUS_TOPIC": topics.status,
            "KAFKA_IDEMPOTENT_PRODUCER": "false",
            "KAFKA_SESSION_TIMEOUT_SECONDS": "2",
            "KAFKA_CONFIRM_SECONDS": str(CONFIRM_SECONDS),
            "CRM_TIMEOUT_SECONDS": "1",
            "RETRY_INTERVAL_SECONDS": "1",
            "RETRY_BACKOFF_BASE_SECONDS": "0.2",
            "RETRY_BACKOFF_MAX_SECONDS": "1",
            "RETRY_MAX_ATTEMPTS": "1000",
        }
        crm_env = topics.crm_env(broker, f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}")
        ports = [free_port(), free_port()]
        database = create_engine(postgres_database)
        async with (
            service_process(postgres_database, crm.url, ports[0], **env) as doomed,
            service_process(postgres_database, crm.url, ports[1], **env),
            loopback_client(f"http://127.0.0.1:{ports[0]}") as first,
            loopback_client(f"http://127.0.0.1:{ports[1]}") as survivor,
        ):
            ids = []
            for n in range(CUSTOMERS):
                client = first if n % 2 else survivor
                body = {"firstName": "R1", "lastName": "Replica", "email": f"r{n}@example.com"}
                created = await client.post("/api/customers", json=body)
                assert created.status_code == 201, created.text
                ids.append(created.json()["id"])
                body["firstName"] = "R2"
                updated = await client.put(f"/api/customers/{ids[-1]}", json=body)
                assert updated.status_code == 200, updated.text

            async def all_published() -> bool:
                page = (await survivor.get("/api/failed-requests")).json()
                return bool(page["total"] == 0)

            await eventually(all_published, within=30)
            broker.kill()
            broker.start()  # empty

            async def publishing_again() -> bool:
                async with database.connect() as connection:
                    again = select(func.count()).where(UnconfirmedEvent.publications > 1)
                    return bool(await connection.scalar(again))

            await eventually(publishing_again, within=CONFIRM_SECONDS + 15)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=10)

            async with consumers(crm_env):

                async def all_synced() -> bool:
                    customers = await _customers(survivor)
                    return len(customers) == CUSTOMERS and all(
                        c["crm"]["status"] == "synced" and c["crm"]["syncedVersion"] == 2
                        for c in customers
                    )

                # The killed replica's claims lapse (CLAIM_LEASE_SECONDS 2 in tests) and
                # its status partitions move over (session 2 s) within the margin.
                await eventually(all_synced, within=CONFIRM_SECONDS + 20)
            await _assert_one_record_each(survivor, crm_control, ids)
            assert (await survivor.get("/api/failed-requests")).json()["total"] == 0

            async def nothing_awaits() -> bool:
                return await _metric(survivor, "crm_sync_kafka_unconfirmed_events") == 0

            await eventually(nothing_awaits)
        await database.dispose()


def _body(message: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(message.value)
    return body
