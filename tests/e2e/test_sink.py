"""`customer-service sink` on the real broker (Tansu), as real processes, delivering the
service's Kafka events to the CRM mock's HubSpot and Salesforce faces (and to the mock's
own API). On both faces: creates, updates and deletes; a record refused for good
dead-lettered with its customer's later events behind it; a CRM that is down holding the
sink until a probe finds it back; a sink SIGKILLed mid-batch and started again, with no
duplicate and nothing lost; two sinks sharing four partitions; reconciliation in Kafka
mode reading (and repairing) the face the sink writes to. On HubSpot's: the broker
restarted empty.

The customer service runs in this process with `SYNC_MODE=kafka` (its status reader
turns the sink's status events into each customer's `crm` block).
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from asgi_lifespan import LifespanManager
from kafka_support import Broker, Topics, read_topic, running_broker
from support import (
    CrmControl,
    LiveServer,
    crm_view,
    eventually,
    expected_crm_record,
    free_port,
    loopback_client,
    reset_postgres,
)

from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.migrate import migrate

TOKEN = "pat-na1-sink-0000"
CONTACTS = "/crm/v3/objects/contacts"
UPSERT = f"{CONTACTS}/batch/upsert"
ARCHIVE = f"{CONTACTS}/batch/archive"
READ = f"{CONTACTS}/batch/read"
SF_DATA = "/services/data/v62.0"
SF_UPSERT = f"{SF_DATA}/composite/sobjects/Contact/Crm_Sync_Id__c"
SF_DELETE = f"{SF_DATA}/composite/sobjects"
SF_QUERY = f"{SF_DATA}/query"
ADDRESS = {
    "street": "12 St James's Square, Flat 2",
    "city": "London",
    "state": None,
    "postalCode": "SW1Y 4JH",
    "country": "GB",
}


@pytest.fixture
async def service_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    await migrate(url)
    return url


class SinkProcess:
    """`customer-service sink` as a real process, logging to a file of the test's."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._env = {**os.environ, **env}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "customer_service", "sink"],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def partitions(self) -> list[int] | None:
        """The partitions of its last assignment, as it logged them."""
        found = re.findall(r"sink: partitions \[([0-9, ]*)\]", self.log.read_text())
        if not found:
            return None
        return [int(p) for p in found[-1].replace(" ", "").split(",") if p]


def face_settings(crm: LiveServer) -> dict[str, str]:
    """Both faces' settings, pointing at the mock (each connector reads its own)."""
    return {
        "HUBSPOT_BASE_URL": crm.url,
        "HUBSPOT_ACCESS_TOKEN": TOKEN,
        "SALESFORCE_LOGIN_URL": crm.url,
        "SALESFORCE_CLIENT_ID": "crm-sync-sink",
        "SALESFORCE_CLIENT_SECRET": "sink-secret",
    }


def sink_env(
    broker: Broker, topics: Topics, database_url: str, crm: LiveServer, connector: str
) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "CRM_CONNECTOR": connector,
        "CRM_BASE_URL": crm.url,
        **face_settings(crm),
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_TOPIC": topics.events,
        "KAFKA_STATUS_TOPIC": topics.status,
        "KAFKA_DLQ_TOPIC": topics.dlq,
        "KAFKA_SINK_GROUP_ID": topics.group,
        "KAFKA_IDEMPOTENT_PRODUCER": "false",
        "KAFKA_SESSION_TIMEOUT_SECONDS": "2",
        "RETRY_BACKOFF_BASE_SECONDS": "0.2",
        "RETRY_BACKOFF_MAX_SECONDS": "1",
        "RETRY_MAX_ATTEMPTS": "1000",
        "RECOVERY_PROBE_SECONDS": "0.2",
        "CRM_TIMEOUT_SECONDS": "5",
        "LOG_FORMAT": "text",
    }
    return env


@contextmanager
def sinks(env: dict[str, str], folder: Path, count: int = 1) -> Iterator[list[SinkProcess]]:
    processes = [SinkProcess(env, folder / f"sink-{n}.log") for n in range(count)]
    for process in processes:
        process.start()
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()


@asynccontextmanager
async def service(
    database_url: str, crm: LiveServer, broker: Broker, topics: Topics, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    values: dict[str, Any] = {
        "database_url": database_url,
        "crm_base_url": crm.url,
        "retry_interval_seconds": 1,
        "recovery_probe_seconds": 0.2,
        "retry_backoff_base_seconds": 0.2,
        "retry_backoff_max_seconds": 1,
        "retry_max_attempts": 1000,
        "crm_timeout_seconds": 2,
        **topics.service_settings(broker),
    }
    settings = Settings(**{**values, **overrides})
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield client


async def _create(client: httpx.AsyncClient, n: int, **changes: Any) -> dict[str, Any]:
    body = {
        "firstName": "Ada",
        "lastName": "v1",
        "email": f"ada{n}@example.com",
        "address": ADDRESS,
        **changes,
    }
    response = await client.post("/api/customers", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _put(client: httpx.AsyncClient, customer: dict[str, Any], **changes: Any) -> None:
    body = {key: customer[key] for key in ("firstName", "lastName", "email", "phone", "address")}
    response = await client.put(f"/api/customers/{customer['id']}", json={**body, **changes})
    assert response.status_code == 200, response.text


async def _customer(client: httpx.AsyncClient, customer_id: int) -> dict[str, Any]:
    found: dict[str, Any] = (await client.get(f"/api/customers/{customer_id}")).json()
    return found


async def _synced(client: httpx.AsyncClient, customer_id: int, version: int) -> bool:
    crm = (await _customer(client, customer_id))["crm"]
    return bool(crm["status"] == "synced" and crm["syncedVersion"] == version)


async def _all_synced(client: httpx.AsyncClient, version: int, count: int) -> bool:
    items = (await client.get("/api/customers", params={"limit": 500})).json()["items"]
    return len(items) == count and all(
        c["crm"]["status"] == "synced" and c["crm"]["syncedVersion"] == version for c in items
    )


async def _hubspot_read(crm_url: str, customer_ids: list[int]) -> list[tuple[str, dict[str, Any]]]:
    """The contacts HubSpot's face holds for these customers, read by the id property:
    (HubSpot id, properties) each."""
    async with loopback_client(crm_url, timeout=30) as http:
        answer = await http.post(
            READ,
            json={
                "idProperty": "crm_sync_id",
                "properties": list(HUBSPOT.fields.values()),
                "inputs": [{"id": str(i)} for i in customer_ids],
            },
        )
    results: list[dict[str, Any]] = answer.json().get("results", [])
    return [(r["id"], r["properties"]) for r in results]


async def _salesforce_read(
    crm_url: str, customer_ids: list[int]
) -> list[tuple[str, dict[str, Any]]]:
    """The Contacts Salesforce's face holds for these customers, by SOQL on the external id
    field: (Salesforce Id, fields) each."""
    listed = ", ".join(f"'{i}'" for i in customer_ids)
    fields = ", ".join(SALESFORCE.fields.values())
    soql = f"SELECT Id, {fields} FROM Contact WHERE Crm_Sync_Id__c IN ({listed})"
    async with loopback_client(crm_url, timeout=30) as http:
        answer = await http.get(SF_QUERY, params={"q": soql})
    assert answer.status_code == 200, answer.text
    return [(r["Id"], r) for r in answer.json()["records"]]


Reader = Callable[[str, list[int]], Awaitable[list[tuple[str, dict[str, Any]]]]]


@dataclass(frozen=True)
class Face:
    """A face of the CRM mock as these tests see it: the connector that speaks it, the
    paths of its writes, its field names for the neutral ones used here, and how to read
    its contacts back."""

    connector: str
    upsert: str
    delete: str
    # The path of the connector's probe (a read).
    probe: str
    # Neutral name -> the face's field.
    fields: dict[str, str]
    read: Reader

    async def contacts(self, crm_url: str, customer_ids: list[int]) -> dict[int, dict[str, Any]]:
        """The face's contacts of these customers by customer id, in neutral names, with
        the face's own `id`."""
        found = {}
        for crm_id, values in await self.read(crm_url, customer_ids):
            contact = {name: values.get(field) for name, field in self.fields.items()}
            found[int(str(contact["externalId"]))] = {"id": crm_id, **contact}
        return found

    def writes(self, log: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The sink's writes in the request log (not the tests' reads, nor tokens)."""
        return [e for e in log if e["path"] in (self.upsert, self.delete)]

    def sent(self, entry: dict[str, Any]) -> dict[str, Any]:
        """What one upsert entry of the request log carried, in neutral names."""
        body = entry["body"]
        values: dict[str, Any] = body.get("properties", body)  # HubSpot's, or the record
        return {name: values.get(field) for name, field in self.fields.items()}


HUBSPOT = Face(
    "hubspot",
    UPSERT,
    ARCHIVE,
    CONTACTS,
    {
        "externalId": "crm_sync_id",
        "lastName": "lastname",
        "email": "email",
        "street": "address",
        "city": "city",
        "postalCode": "zip",
    },
    _hubspot_read,
)
SALESFORCE = Face(
    "salesforce",
    SF_UPSERT,
    SF_DELETE,
    SF_QUERY,
    {
        "externalId": "Crm_Sync_Id__c",
        "lastName": "LastName",
        "email": "Email",
        "street": "MailingStreet",
        "city": "MailingCity",
        "postalCode": "MailingPostalCode",
    },
    _salesforce_read,
)
both_faces = pytest.mark.parametrize("face", [HUBSPOT, SALESFORCE], ids=lambda f: f.connector)


@both_faces
async def test_the_sink_delivers_creates_updates_and_deletes_to_the_face(
    face: Face,
    service_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    topics = Topics.fresh()
    env = sink_env(kafka_broker, topics, service_url, crm, face.connector)
    async with service(service_url, crm, kafka_broker, topics) as client:
        with sinks(env, tmp_path):
            customer = await _create(client, 1)
            cid = customer["id"]
            await eventually(lambda: _synced(client, cid, 1), within=30)
            contact = (await face.contacts(crm.url, [cid]))[cid]
            # The face's id is crm.id; the address arrives part by part, commas and all.
            assert (await _customer(client, cid))["crm"]["id"] == contact["id"]
            assert {k: contact[k] for k in ("street", "city", "postalCode")} == {
                "street": "12 St James's Square, Flat 2",
                "city": "London",
                "postalCode": "SW1Y 4JH",
            }
            await _put(client, customer, lastName="v2", address={**ADDRESS, "city": "Bath"})
            await eventually(lambda: _synced(client, cid, 2), within=30)
            updated = (await face.contacts(crm.url, [cid]))[cid]
            assert (updated["lastName"], updated["city"]) == ("v2", "Bath")
            assert (await client.delete(f"/api/customers/{cid}")).status_code == 204

            async def deleted() -> bool:
                return not await face.contacts(crm.url, [cid]) and any(
                    e["path"] == face.delete for e in await crm_control.requests(cid)
                )

            await eventually(deleted, within=30)
        log = face.writes(await crm_control.requests(cid))
        # The delete went to the id the sink had learnt: no lookup first.
        assert [(e["path"], e["status"]) for e in log] == [
            (face.upsert, 201),
            (face.upsert, 200),
            (face.delete, 204),
        ]
        statuses = [json.loads(m.value) for m in await read_topic(kafka_broker, topics.status, 3)]
        assert [(s["version"], s["status"]) for s in statuses] == [
            (1, "applied"),
            (2, "applied"),
            (2, "applied"),
        ]
        assert statuses[0]["crmId"] == contact["id"]


async def test_the_sink_delivers_to_the_mock_api_one_call_per_event(
    service_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    topics = Topics.fresh()
    env = sink_env(kafka_broker, topics, service_url, crm, "mock")
    async with service(service_url, crm, kafka_broker, topics) as client:
        with sinks(env, tmp_path):
            customer = await _create(client, 1)
            cid = customer["id"]
            await eventually(lambda: _synced(client, cid, 1), within=30)
            await _put(client, customer, lastName="v2")
            await eventually(lambda: _synced(client, cid, 2), within=30)
            found = await _customer(client, cid)
            [record] = await crm_control.records(cid)
            assert crm_view(record) == expected_crm_record(found)
            assert found["crm"]["id"] == record["id"]
            assert (await client.delete(f"/api/customers/{cid}")).status_code == 204

            async def gone() -> bool:
                return not await crm_control.records(cid)

            await eventually(gone, within=30)
        log = [e for e in await crm_control.requests(cid) if e["method"] != "GET"]  # ours
        assert [(e["method"], e["status"]) for e in log] == [
            ("POST", 201),
            ("PUT", 200),
            ("DELETE", 204),
        ]
        assert log[1]["path"].endswith(f"/{record['id']}")  # the CRM id the sink learnt


@both_faces
async def test_a_refused_record_is_dead_lettered_with_its_customers_later_events_behind_it(
    face: Face,
    service_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    topics = Topics.fresh()
    env = sink_env(kafka_broker, topics, service_url, crm, face.connector)
    async with service(service_url, crm, kafka_broker, topics) as client:
        with sinks(env, tmp_path):
            # Written before the sink reads: one poll holds the refused create, its fix
            # and a neighbour; the fix must wait for the refused one to be settled.
            flowing = await _create(client, 1)
            typo = await _create(client, 2, email="typo@example.c")
            await _put(client, typo, email="typo@example.com", lastName="v2")

            async def both_synced() -> bool:
                return await _synced(client, typo["id"], 2) and await _synced(
                    client, flowing["id"], 1
                )

            await eventually(both_synced, within=30)
        [letter] = await read_topic(kafka_broker, topics.dlq, at_least=1)
        headers = dict(letter.headers)
        event = json.loads(letter.value)
        assert (event["customerId"], event["version"]) == (typo["id"], 1)
        assert b"INVALID_EMAIL" in headers["error"] or b"400" in headers["error"]
        assert headers["eventType"] == b"CREATE"
        statuses = [json.loads(m.value) for m in await read_topic(kafka_broker, topics.status, 3)]
        mine = [(s["version"], s["status"]) for s in statuses if s["customerId"] == typo["id"]]
        assert mine == [(1, "dead"), (2, "applied")]
        # The refused upserts all came before the one that made the contact.
        log = face.writes(await crm_control.requests(typo["id"]))
        assert {e["path"] for e in log} == {face.upsert}
        made = [i for i, e in enumerate(log) if e["status"] < 300]
        assert made == [len(log) - 1] and len(log) >= 2, [(e["status"]) for e in log]
        assert face.sent(log[0])["email"] == "typo@example.c"
        assert face.sent(log[-1])["email"] == "typo@example.com"
        contact = (await face.contacts(crm.url, [typo["id"]]))[typo["id"]]
        assert (contact["lastName"], contact["email"]) == ("v2", "typo@example.com")


async def test_a_message_that_is_no_event_is_dead_lettered_and_its_partition_goes_on(
    service_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    topics = Topics.fresh()
    env = sink_env(kafka_broker, topics, service_url, crm, "mock")
    async with service(service_url, crm, kafka_broker, topics) as client:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            for key in (b"1", b"2", b"3", b"4"):  # keyed as the customers written next
                await producer.send_and_wait(topics.events, key=key, value=b"{not json")
        finally:
            await producer.stop()
        with sinks(env, tmp_path):
            customers = [await _create(client, n) for n in range(4)]
            for customer in customers:
                await eventually(lambda c=customer: _synced(client, c["id"], 1), within=30)
        letters = await read_topic(kafka_broker, topics.dlq, at_least=4)
        assert [m.value for m in letters] == [b"{not json"] * 4
        assert all(b"invalid event" in dict(m.headers)["error"] for m in letters)
        assert len(await crm_control.records()) == 4


@both_faces
async def test_a_crm_that_is_down_holds_the_sink_until_a_probe_finds_it_back(
    face: Face,
    service_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    topics = Topics.fresh()
    env = sink_env(kafka_broker, topics, service_url, crm, face.connector)
    async with service(service_url, crm, kafka_broker, topics) as client:
        with sinks(env, tmp_path):
            first = await _create(client, 0)
            await eventually(lambda: _synced(client, first["id"], 1), within=30)
            await crm_control.faults(down=True, statusCode=503)
            customers = [await _create(client, n) for n in range(1, 4)]
            await _put(client, customers[0], lastName="v2")

            async def outage(probes: int) -> tuple[int, int] | None:
                log = await crm_control.requests()
                refused = sum(1 for e in log if e["path"] == face.upsert and e["status"] == 503)
                asked = sum(1 for e in log if e["path"] == face.probe and e["status"] == 503)
                return (refused, asked) if refused and asked >= probes else None

            # Held: a probe asks every RECOVERY_PROBE_SECONDS, one read at a time, and no
            # upsert is tried meanwhile (with backoff alone, from 0.2 s to 1 s, the refused
            # batch would have gone again several times).
            refused, _ = await eventually(lambda: outage(3), within=30)
            assert await eventually(lambda: outage(12), within=30) == (refused, ANY)
            for customer in customers:
                assert (await _customer(client, customer["id"]))["crm"]["status"] == "pending"
            await crm_control.faults(down=False)

            async def all_there() -> bool:
                return await _synced(client, customers[0]["id"], 2) and all(
                    [await _synced(client, c["id"], 1) for c in customers[1:]]
                )

            await eventually(all_there, within=30)
        contacts = await face.contacts(crm.url, [c["id"] for c in customers])
        assert contacts[customers[0]["id"]]["lastName"] == "v2"
        assert len(contacts) == 3


async def test_the_sink_carries_on_after_the_broker_restarts_empty(
    service_url: str, crm: LiveServer, crm_control: CrmControl, tmp_path: Path
) -> None:
    topics = Topics.fresh()
    with running_broker() as broker:
        env = sink_env(broker, topics, service_url, crm, "hubspot")
        # An event published to the new, empty topic before the sink looks at it again can
        # be skipped by the sink (its old offset is not yet past the new partition's end):
        # the service publishes it again once KAFKA_CONFIRM_SECONDS pass unconfirmed.
        confirm = 3
        async with service(
            service_url, crm, broker, topics, kafka_confirm_seconds=confirm
        ) as client:
            with sinks(env, tmp_path):
                customer = await _create(client, 1)
                await eventually(lambda: _synced(client, customer["id"], 1), within=30)
                broker.kill()
                broker.start()  # the same port; memory storage: an empty broker
                await _put(client, customer, lastName="v2")
                later = await _create(client, 2)
                await eventually(lambda: _synced(client, customer["id"], 2), within=confirm + 30)
                await eventually(lambda: _synced(client, later["id"], 1), within=30)
    contacts = await HUBSPOT.contacts(crm.url, [customer["id"], later["id"]])
    assert contacts[customer["id"]]["lastName"] == "v2"
    assert len(await crm_control.records()) == 2


@both_faces
async def test_a_sink_killed_mid_batch_and_started_again_loses_nothing_and_duplicates_nothing(
    face: Face,
    service_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    topics = Topics.fresh()
    env = {
        **sink_env(kafka_broker, topics, service_url, crm, face.connector),
        "CRM_BATCH_SIZE": "10",
    }
    customers, versions = 40, 4
    # Each batch call takes 400 ms: a kill right after the first contacts lands mid-call.
    await crm_control.faults(latencyMs=400)
    async with service(service_url, crm, kafka_broker, topics) as client:
        written = [await _create(client, n) for n in range(customers)]
        for version in range(2, versions + 1):
            for customer in written:
                await _put(client, customer, lastName=f"v{version}")
        with sinks(env, tmp_path) as [sink]:

            async def some_landed() -> bool:
                log = await crm_control.requests()
                return sum(1 for e in log if e["path"] == face.upsert and e["status"] < 300) >= 10

            await eventually(some_landed, within=60)
            sink.kill()
            before = len(face.writes(await crm_control.requests()))
            assert before < customers * versions  # mid-stream
            sink.start()
            await eventually(lambda: _all_synced(client, versions, customers), within=90)

            # The same events again (a publish repeated, say): each is recognised by its
            # eventId and answered with its status again; none reaches the CRM twice.
            copies = (await read_topic(kafka_broker, topics.events, at_least=customers))[:20]
            ids_again = [json.loads(m.value)["eventId"] for m in copies]
            before = await _status_counts(kafka_broker, topics.status, at_least=customers)
            calls = len(face.writes(await crm_control.requests()))
            producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
            await producer.start()
            try:
                for message in copies:
                    await producer.send_and_wait(
                        topics.events, key=message.key, value=message.value
                    )
            finally:
                await producer.stop()

            async def answered_again() -> bool:
                now = await _status_counts(kafka_broker, topics.status, at_least=customers)
                return all(now[e] > before[e] for e in ids_again)

            await eventually(answered_again, within=30)
            assert len(face.writes(await crm_control.requests())) == calls
        ids = [c["id"] for c in written]
        contacts = await face.contacts(crm.url, ids)
        assert sorted(contacts) == sorted(ids)
        assert {c["lastName"] for c in contacts.values()} == {f"v{versions}"}
        assert len(await crm_control.records()) == customers  # no duplicate contact
        landed: dict[str, list[int]] = defaultdict(list)
        for entry in face.writes(await crm_control.requests()):
            if entry["path"] == face.upsert and entry["status"] < 300:
                landed[entry["externalId"]].append(int(face.sent(entry)["lastName"][1:]))
        for customer_id, seen in landed.items():
            # In order; a batch cut short by the kill may land once more, never behind.
            assert seen == sorted(seen), (customer_id, seen)
            assert seen[-1] == versions


async def _status_counts(broker: Broker, topic: str, at_least: int) -> Counter[str]:
    """How many status events each eventId has on `topic`: read from the start until
    `at_least` are found and three polls in a row bring nothing new."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    counts: Counter[str] = Counter()
    try:
        quiet = 0
        while sum(counts.values()) < at_least or quiet < 3:
            batches = await consumer.getmany(timeout_ms=200)
            quiet = 0 if batches else quiet + 1
            for messages in batches.values():
                counts.update(json.loads(m.value)["eventId"] for m in messages)
    finally:
        await consumer.stop()
    return counts


@both_faces
async def test_two_sinks_share_four_partitions(
    face: Face,
    postgres_database: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    """On PostgreSQL, as several sink processes would run."""
    database_url = postgres_database
    await reset_postgres(database_url)
    topics = Topics.fresh()
    env = sink_env(kafka_broker, topics, database_url, crm, face.connector)
    customers, versions = 100, 5
    async with service(database_url, crm, kafka_broker, topics) as client:
        with sinks(env, tmp_path, count=2) as both:

            async def shared() -> bool:
                found = [s.partitions() for s in both]
                return all(found) and sorted(p for ps in found for p in ps or []) == [0, 1, 2, 3]

            await eventually(shared, within=60)
            written = [await _create(client, n) for n in range(customers)]
            for version in range(2, versions + 1):
                for customer in written:
                    await _put(client, customer, lastName=f"v{version}")
            await eventually(lambda: _all_synced(client, versions, customers), within=120)
            assert [s.stop() for s in both] == [0, 0]
        ids = [c["id"] for c in written]
        contacts = await face.contacts(crm.url, ids)
        assert sorted(contacts) == sorted(ids)
        assert len(await crm_control.records()) == customers
        delivered = {int(c["id"]): (await _customer(client, c["id"]))["crm"]["id"] for c in written}
        assert delivered == {cid: contacts[cid]["id"] for cid in ids}


async def _reconcile_command(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """`customer-service reconcile` as a process: its exit code and its report."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "customer_service",
        "reconcile",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None and out, err.decode()
    report: dict[str, Any] = json.loads(out)
    return process.returncode, report


def _drift(report: dict[str, Any]) -> tuple[int, list[int], list[str], list[int]]:
    return report["checked"], report["missing"], report["extra"], report["different"]


@both_faces
async def test_reconciliation_in_kafka_mode_reads_the_face_the_sink_writes_to(
    face: Face,
    service_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    tmp_path: Path,
) -> None:
    """As beside a real CRM, CRM_BASE_URL (the mock's own API) leads nowhere: the API's and
    the command's reconciliation read the CRM through CRM_CONNECTOR's reader, and the
    repairs they queue reach the face through the broker and the sink."""
    topics = Topics.fresh()
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = sink_env(kafka_broker, topics, service_url, crm, face.connector)
    settings = {k.lower(): v for k, v in face_settings(crm).items()}
    async with service(
        service_url,
        crm,
        kafka_broker,
        topics,
        crm_connector=face.connector,
        crm_base_url=nowhere,
        **settings,
    ) as client:
        with sinks(env, tmp_path):
            kept, lost = await _create(client, 1), await _create(client, 2)
            for customer in (kept, lost):
                await eventually(lambda c=customer: _synced(client, c["id"], 1), within=30)
            clean = await client.post("/api/reconciliation")
            assert clean.status_code == 200, clean.text
            assert _drift(clean.json()) == (2, [], [], [])
            # Drift made in the CRM: a contact deleted, one created by someone else.
            lost_id = (await _customer(client, lost["id"]))["crm"]["id"]
            gone = await crm_control.http.delete(f"/api/crm/customers/{lost_id}")
            assert gone.status_code == 204, gone.text
            stranger = {"externalId": "999999", "firstName": "S", "lastName": "Stranger"}
            made = await crm_control.http.post(
                "/api/crm/customers", json={**stranger, "email": "s@example.com"}
            )
            assert made.status_code == 201, made.text
            found = await client.post("/api/reconciliation", params={"repair": "true"})
            assert found.status_code == 200, found.text
            assert _drift(found.json()) == (2, [lost["id"]], ["999999"], [])
            assert found.json()["queued"] == 2

            async def repaired() -> bool:
                contacts = await face.contacts(crm.url, [lost["id"], 999999])
                return (
                    sorted(contacts) == [lost["id"]]
                    and contacts[lost["id"]]["id"]
                    == (await _customer(client, lost["id"]))["crm"]["id"]
                )

            await eventually(repaired, within=30)
            command_env = {
                **env,
                "SYNC_MODE": "kafka",
                "CRM_BASE_URL": nowhere,
                "KAFKA_PARTITIONS": "4",
            }
            code, report = await _reconcile_command(command_env)
            assert (code, _drift(report)) == (0, (2, [], [], []))
        assert (await _customer(client, lost["id"]))["crm"]["id"] != lost_id


def test_the_sink_refuses_a_database_that_is_not_migrated(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-m", "customer_service", "sink"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "run 'customer-service migrate' first" in done.stderr
