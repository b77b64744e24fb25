"""Kafka mode under the failures of its own: the broker stopped, the CRM's consumer killed,
a poison event, and two consumers sharing four partitions (README: the Kafka alternative).

The broker is the real Tansu binary; the CRM's consumer runs as `crm-mock consume`
processes (in this process where killing it is not the point).
"""

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from kafka_support import Broker, ConsumerProcess, Topics, consumers, read_topic, running_broker
from support import CrmControl, LiveServer, crm_view, eventually, expected_crm_record

from crm_mock import store
from crm_mock.config import CrmSettings
from crm_mock.consumer import CrmConsumer
from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.migrate import migrate

WRITE = {"lastName": "Kafka"}


@pytest.fixture
async def service_url(tmp_path: Path) -> str:
    """The service's own migrated SQLite database (these tests are about the broker)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    await migrate(url)
    return url


def _settings(url: str, crm: LiveServer, broker: Broker, topics: Topics, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "crm_base_url": crm.url,
        "retry_interval_seconds": 1,
        "recovery_probe_seconds": 0.2,
        "retry_backoff_base_seconds": 0.2,
        "retry_backoff_max_seconds": 1,
        "retry_max_attempts": 1000,
        "crm_timeout_seconds": 1,
        **topics.service_settings(broker),
        **extra,
    }
    return Settings(**values)


def _crm_settings(env: dict[str, str]) -> CrmSettings:
    return CrmSettings(**{k.lower(): v for k, v in env.items()})


class InProcessConsumer:
    """`CrmConsumer` on its own engine in this event loop."""

    def __init__(self, env: dict[str, str]) -> None:
        settings = _crm_settings(env)
        self._engine = store.create_engine(settings.crm_database_url)
        self._consumer = CrmConsumer(settings, store.create_sessionmaker(self._engine))
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "InProcessConsumer":
        self._task = asyncio.create_task(self._consumer.run())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._consumer.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 20)
        await self._engine.dispose()


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


async def _write(
    client: httpx.AsyncClient, customer_id: int | None, first_name: str, n: int
) -> dict[str, Any]:
    body = {**WRITE, "firstName": first_name, "email": f"k{n}@example.com"}
    if customer_id is None:
        response = await client.post("/api/customers", json=body)
        assert response.status_code == 201, response.text
    else:
        response = await client.put(f"/api/customers/{customer_id}", json=body)
        assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _all_synced(client: httpx.AsyncClient, version: int, count: int) -> bool:
    page = (await client.get("/api/customers", params={"limit": 500})).json()
    items = page["items"]
    return len(items) == count and all(
        c["crm"]["status"] == "synced" and c["crm"]["syncedVersion"] == version for c in items
    )


async def _assert_crm_equal(client: httpx.AsyncClient, crm: CrmControl) -> None:
    customers = (await client.get("/api/customers", params={"limit": 500})).json()["items"]
    records = {r["externalId"]: r for r in await crm.records()}
    assert len(records) == len(customers)
    for customer in customers:
        record = records[str(customer["id"])]
        assert crm_view(record) == expected_crm_record(customer)
        assert customer["crm"]["id"] == record["id"]


def _versions_landed(log: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Per customer, the event versions the CRM applied (2xx), in the order it did."""
    landed: dict[str, list[int]] = defaultdict(list)
    for entry in log:
        if entry["status"] < 300 and entry["method"] != "GET":
            landed[entry["externalId"]].append(entry["body"]["version"])
    return landed


async def test_broker_stopped_during_50_writes_loses_nothing_and_keeps_order(
    service_url: str, crm: LiveServer, crm_control: CrmControl, tmp_path: Path
) -> None:
    topics = Topics.fresh()
    with running_broker() as broker:
        env = topics.crm_env(broker, f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}")
        app = create_app(_settings(service_url, crm, broker, topics))
        async with InProcessConsumer(env), LifespanManager(app), _client(app) as client:
            ids = [(await _write(client, None, "v1", n))["id"] for n in range(5)]
            await eventually(lambda: _all_synced(client, 1, 5), within=30)

            broker.kill()
            slowest = 0.0
            for round_ in range(2, 12):
                for n, customer_id in enumerate(ids):
                    started = time.monotonic()
                    await _write(client, customer_id, f"v{round_}", n)
                    slowest = max(slowest, time.monotonic() - started)
            # 50 writes answered without waiting for the broker, and every one is kept.
            assert slowest < 1.0, slowest

            async def all_refused() -> bool:
                # Nothing is in flight any more: each customer's head request has failed.
                metrics = (await client.get("/metrics")).text
                rows = (await client.get("/api/failed-requests", params={"limit": 500})).json()
                heads = {r["customerId"]: r for r in reversed(rows["items"])}
                return (
                    "crm_sync_deliveries_in_flight 0.0" in metrics
                    and set(heads) == set(ids)
                    and all(r["status"] == "failed" for r in heads.values())
                )

            await eventually(all_refused)
            broker.start()  # the same port; memory storage: an empty broker
            await eventually(lambda: _all_synced(client, 11, 5), within=60)
            await _assert_crm_equal(client, crm_control)
            for customer_id, versions in _versions_landed(await crm_control.requests()).items():
                assert versions == sorted(set(versions)), (customer_id, versions)
                assert versions[-1] == 11


async def test_consumer_killed_mid_stream_loses_nothing_and_duplicates_change_nothing(
    service_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    topics = Topics.fresh()
    env = topics.crm_env(kafka_broker, f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}")
    app = create_app(_settings(service_url, crm, kafka_broker, topics))
    await crm_control.faults(latencyMs=15)
    async with LifespanManager(app), _client(app) as client:
        async with consumers(env) as [consumer]:
            ids = [(await _write(client, None, "v1", n))["id"] for n in range(20)]
            for round_ in range(2, 7):
                for n, customer_id in enumerate(ids):
                    await _write(client, customer_id, f"v{round_}", n)

            async def some_applied() -> bool:
                log = await crm_control.requests()
                return sum(1 for r in log if r["status"] < 300) >= 25

            await eventually(some_applied, within=30)
            consumer.kill()
            killed_at = len(await crm_control.requests())
            assert killed_at < 120  # mid-stream

            consumer.start()
            await eventually(lambda: _all_synced(client, 6, 20), within=60)
        await _assert_crm_equal(client, crm_control)
        log = await crm_control.requests()
        for customer_id, versions in _versions_landed(log).items():
            assert versions == sorted(set(versions)), (customer_id, versions)

        # The same events delivered again: each is recognised and changes nothing.
        before = await crm_control.records()
        # Pending updates of a customer may be coalesced into one event, so the topic holds
        # between 40 (a create and the last update each) and 120 events.
        events = (await read_topic(kafka_broker, topics.events, at_least=40))[:30]
        keys = {json.loads(m.value)["eventId"] for m in events}
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            for message in events:
                await producer.send_and_wait(topics.events, key=message.key, value=message.value)
        finally:
            await producer.stop()
        async with consumers(env):

            async def every_duplicate_refused() -> bool:
                now = _by_key(await crm_control.requests(), keys)
                assert now[200] == _by_key(log, keys)[200]  # nothing applied again
                return now[409] >= _by_key(log, keys)[409] + len(keys)

            await eventually(every_duplicate_refused, within=30)
        assert await crm_control.records() == before
        assert await _all_synced(client, 6, 20)


def _by_key(log: list[dict[str, Any]], keys: set[str]) -> dict[int, int]:
    """How many calls carrying one of `keys` were applied (200) and refused (409)."""
    counts = {200: 0, 409: 0}
    for entry in log:
        if entry["idempotencyKey"] not in keys:
            continue
        if entry["status"] == 409:
            counts[409] += 1
        elif entry["status"] < 300:
            counts[200] += 1
    return counts


async def test_poison_event_goes_to_the_dlq_and_replay_applies_it_in_order(
    service_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    topics = Topics.fresh()
    env = topics.crm_env(kafka_broker, f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}")
    cli = ConsumerProcess(env)
    app = create_app(_settings(service_url, crm, kafka_broker, topics))
    async with InProcessConsumer(env), LifespanManager(app), _client(app) as client:
        # The CRM refuses for good (422): the event is dead-lettered at once.
        await crm_control.faults(down=True, statusCode=422)
        poisoned = await _write(client, None, "v1", 0)

        async def dead() -> bool:
            current = (await client.get(f"/api/customers/{poisoned['id']}")).json()
            return bool(current["crm"]["status"] == "dead")

        await eventually(dead)
        await crm_control.faults(down=False)
        # The cause is gone, but the customer's next event must not overtake the dead one.
        await _write(client, poisoned["id"], "v2", 0)
        flowing = await _write(client, None, "v1", 1)
        await _write(client, flowing["id"], "v2", 1)
        letters = await read_topic(kafka_broker, topics.dlq, at_least=2)
        headers = [dict(m.headers) for m in letters]
        assert [json.loads(m.value)["version"] for m in letters] == [1, 2]
        assert b"422" in headers[0]["error"] and headers[0]["attempts"] == b"1"
        assert b"held behind dead letter" in headers[1]["error"]

        async def other_synced() -> bool:
            current = (await client.get(f"/api/customers/{flowing['id']}")).json()
            return bool(current["crm"]["status"] == "synced")

        await eventually(other_synced)
        assert await crm_control.records(poisoned["id"]) == []
        listed = [json.loads(line) for line in cli.dlq("list").stdout.splitlines()]
        assert [(x["externalId"], x["version"]) for x in listed] == [
            (str(poisoned["id"]), 1),
            (str(poisoned["id"]), 2),
        ]

        replayed = cli.dlq("replay", "--all")
        assert replayed.returncode == 0, replayed.stderr
        assert cli.dlq("list").stdout == ""

        async def synced() -> bool:
            current = (await client.get(f"/api/customers/{poisoned['id']}")).json()
            return current["crm"] == {
                "id": current["crm"]["id"],
                "status": "synced",
                "syncedVersion": 2,
            }

        await eventually(synced)
        await _assert_crm_equal(client, crm_control)
        versions = _versions_landed(await crm_control.requests(poisoned["id"]))
        assert versions[str(poisoned["id"])] == [1, 2]

        # An event that is not even JSON: dead-lettered with its error, nothing else stops.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topics.events, key=b"424242", value=b"{not json")
        finally:
            await producer.stop()
        garbage = (await read_topic(kafka_broker, topics.dlq, at_least=3))[2]
        assert garbage.value == b"{not json"
        assert b"invalid event" in dict(garbage.headers)["error"]
        await _write(client, flowing["id"], "v3", 1)

        async def still_flowing() -> bool:
            current = (await client.get(f"/api/customers/{flowing['id']}")).json()
            return bool(current["crm"]["syncedVersion"] == 3)

        await eventually(still_flowing)


async def test_two_consumers_on_four_partitions_bring_200_customers_to_their_last_version(
    service_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    topics = Topics.fresh()
    env = topics.crm_env(kafka_broker, f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}")
    app = create_app(_settings(service_url, crm, kafka_broker, topics))
    customers, updates = 200, 10
    async with consumers(env, count=2), LifespanManager(app), _client(app) as client:
        slots = asyncio.Semaphore(16)

        async def churn(n: int) -> None:
            async with slots:
                customer = await _write(client, None, "v1", n)
                for version in range(2, updates + 2):
                    await _write(client, customer["id"], f"v{version}", n)

        started = time.monotonic()
        await asyncio.gather(*(churn(n) for n in range(customers)))
        written = time.monotonic() - started
        await eventually(lambda: _all_synced(client, updates + 1, customers), within=120)
        synced = time.monotonic() - started
        print(f"{customers * (updates + 1)} writes in {written:.1f}s, all synced at {synced:.1f}s")
        await _assert_crm_equal(client, crm_control)
        landed = _versions_landed(await crm_control.requests())
        assert len(landed) == customers
        for customer_id, versions in landed.items():
            assert versions == sorted(set(versions)), (customer_id, versions)
            assert versions[-1] == updates + 1
