"""The CRM consumer's handling of one fetched batch, on both databases, with a stand-in
producer whose acknowledgements the test gives (or refuses): runs of events applied in
one transaction, status events confirmed before the offset is, and a fault or a dead
letter in the middle of a run keeping the partition's order (`crm_mock.consumer`)."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from crm_mock import ledger, store
from crm_mock.applier import Applier
from crm_mock.config import CrmSettings
from crm_mock.consumer import CrmConsumer
from crm_mock.faults import FaultSettings

STATUS_TOPIC = "events.status"
DLQ_TOPIC = "events.dlq"


@dataclass(frozen=True)
class Message:
    """What the consumer reads of an aiokafka `ConsumerRecord`."""

    offset: int
    key: bytes
    value: bytes
    topic: str = "events"
    partition: int = 0


@dataclass
class Sent:
    topic: str
    key: bytes
    value: bytes
    acknowledged: "asyncio.Future[None]"

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.value)
        return parsed


@dataclass
class FakeProducer:
    """`send` hands back a future the test settles (at once with `auto_ack`);
    `send_and_wait` (the retrying publish) succeeds and is recorded apart."""

    auto_ack: bool = False
    sent: list[Sent] = field(default_factory=list)
    published: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    async def send(self, topic: str, key: bytes, value: bytes, **_: Any) -> "asyncio.Future[None]":
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.auto_ack:
            acknowledged.set_result(None)
        self.sent.append(Sent(topic, key, value, acknowledged))
        return acknowledged

    async def send_and_wait(self, topic: str, key: bytes, value: bytes, **_: Any) -> None:
        self.published.append((topic, key, value))


class ScriptedDraws:
    """The fault switch's random draws, given in order by the test (then 0.99: no fault)."""

    def __init__(self, *draws: float) -> None:
        self._draws = list(draws)

    def random(self) -> float:
        return self._draws.pop(0) if self._draws else 0.99


@pytest.fixture
async def engine(crm_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = store.create_engine(crm_database_url)
    await store.create_tables(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return store.create_sessionmaker(engine)


def _consumer(
    sessionmaker: async_sessionmaker[AsyncSession],
    producer: FakeProducer,
    draws: ScriptedDraws | None = None,
) -> CrmConsumer:
    settings = CrmSettings(
        _env_file=None,
        kafka_status_topic=STATUS_TOPIC,
        kafka_dlq_topic=DLQ_TOPIC,
        kafka_max_attempts=5,
    )
    consumer = CrmConsumer(settings, sessionmaker)
    # The seams a broker would fill: `_session` sets the producer while it runs.
    consumer._producer = producer
    if draws is not None:
        consumer._applier = Applier(sessionmaker, rng=draws)  # type: ignore[arg-type]
    return consumer


def _messages(*events: tuple[int, str, int], first_offset: int = 100) -> list[Message]:
    """(customer, event type, version) each, at consecutive offsets."""
    messages = []
    for n, (customer, event_type, version) in enumerate(events):
        body = {
            "eventId": f"e-{customer}-{version}-{event_type}",
            "eventType": event_type,
            "customerId": customer,
            "version": version,
            "occurredAt": "2026-11-24T10:00:00Z",
            "customer": None
            if event_type == "DELETE"
            else {
                "externalId": str(customer),
                "firstName": f"v{version}",
                "lastName": "Run",
                "email": f"c{customer}@example.com",
                "phone": None,
                "address": "",
            },
        }
        value = json.dumps(body).encode()
        messages.append(Message(first_offset + n, str(customer).encode(), value))
    return messages


async def _log(sessionmaker: async_sessionmaker[AsyncSession]) -> list[tuple[str, str, int]]:
    """The request log, oldest first: (externalId, method, status)."""
    async with sessionmaker() as session:
        entries = await session.execute(
            select(store.RequestLogEntry).order_by(store.RequestLogEntry.id)
        )
        return [(e.external_id or "", e.method, e.status) for e in entries.scalars()]


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


async def _still_running(task: "asyncio.Task[Any]", window: float = 0.3) -> bool:
    done, _ = await asyncio.wait({task}, timeout=window)
    return not done


async def test_the_offset_waits_until_the_broker_acknowledged_every_status_event(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    producer = FakeProducer()
    consumer = _consumer(sessionmaker, producer)
    messages = _messages((1, "CREATE", 1), (2, "CREATE", 1), (1, "UPDATE", 2), (3, "CREATE", 1))
    task = asyncio.create_task(consumer._partition(messages))
    await _until(lambda: len(producer.sent) == 4)
    # Applied and the statuses handed over, in offset order ...
    assert [(s.body["customerId"], s.body["version"]) for s in producer.sent] == [
        (1, 1),
        (2, 1),
        (1, 2),
        (3, 1),
    ]
    assert {s.body["status"] for s in producer.sent} == {"applied"}
    assert len(await _log(sessionmaker)) == 4
    # ... but no offset to commit while one acknowledgement is missing.
    for sent in producer.sent[:3]:
        sent.acknowledged.set_result(None)
    assert await _still_running(task)
    producer.sent[3].acknowledged.set_result(None)
    assert await asyncio.wait_for(task, 5) == messages[-1].offset
    assert producer.published == []


async def test_a_status_the_broker_refused_is_published_again_with_its_customers_later_ones(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    producer = FakeProducer()
    consumer = _consumer(sessionmaker, producer)
    messages = _messages((1, "CREATE", 1), (2, "CREATE", 1), (1, "UPDATE", 2), (2, "UPDATE", 2))
    task = asyncio.create_task(consumer._partition(messages))
    await _until(lambda: len(producer.sent) == 4)
    producer.sent[0].acknowledged.set_exception(TimeoutError("no answer"))
    for sent in producer.sent[1:]:
        sent.acknowledged.set_result(None)
    assert await asyncio.wait_for(task, 5) == messages[-1].offset
    # Customer 1's refused status, then its later one again, in their order; customer 2's
    # were acknowledged and are not repeated.
    republished = [(t, k, json.loads(v)["version"]) for t, k, v in producer.published]
    assert republished == [(STATUS_TOPIC, b"1", 1), (STATUS_TOPIC, b"1", 2)]


async def test_a_consumer_stopping_before_an_acknowledgement_commits_only_up_to_it(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    producer = FakeProducer()
    consumer = _consumer(sessionmaker, producer)
    messages = _messages((1, "CREATE", 1), (2, "CREATE", 1), (3, "CREATE", 1), (4, "CREATE", 1))
    task = asyncio.create_task(consumer._partition(messages))
    await _until(lambda: len(producer.sent) == 4)
    # The session ends (the broker went away): the producer is gone, a status unconfirmed.
    consumer.stop()
    consumer._producer = None
    producer.sent[0].acknowledged.set_result(None)
    producer.sent[1].acknowledged.set_result(None)
    producer.sent[2].acknowledged.set_exception(ConnectionError("broker gone"))
    producer.sent[3].acknowledged.set_result(None)
    assert await asyncio.wait_for(task, 5) == messages[1].offset
    # The first one refused: nothing of the batch may be committed.
    producer = FakeProducer()
    consumer = _consumer(sessionmaker, producer)
    task = asyncio.create_task(consumer._partition(_messages((5, "CREATE", 1))))
    await _until(lambda: len(producer.sent) == 1)
    consumer.stop()
    consumer._producer = None
    producer.sent[0].acknowledged.set_exception(ConnectionError("broker gone"))
    assert await asyncio.wait_for(task, 5) is None


async def test_a_fault_in_the_middle_of_a_run_is_retried_before_the_events_behind_it(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await ledger.share_faults(sessionmaker, FaultSettings(error_rate=0.5, status_code=503))
    producer = FakeProducer(auto_ack=True)
    # The third event's first attempt draws a fault; every other draw does not.
    consumer = _consumer(sessionmaker, producer, ScriptedDraws(0.9, 0.9, 0.1))
    messages = _messages(
        (7, "CREATE", 1), (8, "CREATE", 1), (7, "UPDATE", 2), (7, "UPDATE", 3), (8, "UPDATE", 2)
    )
    assert await asyncio.wait_for(consumer._partition(messages), 10) == messages[-1].offset
    assert await _log(sessionmaker) == [
        ("7", "POST", 201),
        ("8", "POST", 201),
        ("7", "PUT", 503),  # the fault, logged as the attempt it was
        ("7", "PUT", 200),  # its retry, before anything behind it
        ("7", "PUT", 200),
        ("8", "PUT", 200),
    ]
    statuses = [(s.body["customerId"], s.body["version"], s.body["status"]) for s in producer.sent]
    assert statuses == [
        (7, 1, "applied"),
        (8, 1, "applied"),
        (7, 2, "applied"),
        (7, 3, "applied"),
        (8, 2, "applied"),
    ]
    async with sessionmaker() as session:
        record = await store.find_customer_by_external_id(session, "7")
    assert record is not None and record.first_name == "v3"


async def test_a_dead_letter_in_the_middle_of_a_run_is_followed_by_its_customers_later_events(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await ledger.share_faults(sessionmaker, FaultSettings(error_rate=0.5, status_code=422))
    producer = FakeProducer(auto_ack=True)
    consumer = _consumer(sessionmaker, producer, ScriptedDraws(0.9, 0.9, 0.1))
    messages = _messages(
        (9, "CREATE", 1), (10, "CREATE", 1), (9, "UPDATE", 2), (9, "UPDATE", 3), (10, "UPDATE", 2)
    )
    assert await asyncio.wait_for(consumer._partition(messages), 10) == messages[-1].offset
    statuses = [(s.body["customerId"], s.body["version"], s.body["status"]) for s in producer.sent]
    assert statuses == [
        (9, 1, "applied"),
        (10, 1, "applied"),
        (9, 2, "dead"),  # refused for good (422)
        (9, 3, "dead"),  # held behind it, never applied over it
        (10, 2, "applied"),
    ]
    letters = [(t, json.loads(v)["version"]) for t, _, v in producer.published]
    assert letters == [(DLQ_TOPIC, 2), (DLQ_TOPIC, 3)]
    assert await _log(sessionmaker) == [
        ("9", "POST", 201),
        ("10", "POST", 201),
        ("9", "PUT", 422),
        ("10", "PUT", 200),
    ]
    async with sessionmaker() as session:
        record = await store.find_customer_by_external_id(session, "9")
    assert record is not None and record.first_name == "v1"


async def test_one_run_applies_writes_duplicates_and_a_delete_of_one_customer_in_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    producer = FakeProducer(auto_ack=True)
    consumer = _consumer(sessionmaker, producer)
    messages = _messages(
        (11, "CREATE", 1),
        (11, "CREATE", 1),
        (11, "UPDATE", 2),
        (11, "DELETE", 2),
        (11, "UPDATE", 2),
    )
    assert await asyncio.wait_for(consumer._partition(messages), 10) == messages[-1].offset
    assert await _log(sessionmaker) == [
        ("11", "POST", 201),
        ("11", "POST", 409),  # the same event again: a duplicate, skipped
        ("11", "PUT", 200),
        ("11", "DELETE", 204),
        ("11", "PUT", 409),  # older than the delete: skipped
    ]
    async with sessionmaker() as session:
        assert await store.find_customer_by_external_id(session, "11") is None
        assert await ledger.applied_version(session, "11") == 2 * 2 + 1


async def test_a_record_made_in_a_run_keeps_the_run_s_last_write_and_a_deleted_one_comes_back(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """New records and version rows are inserted at the end of their run: what is written
    is their last state, and a stored record deleted then created again in one run is
    gone before its successor is inserted (a new CRM id, the same external id)."""
    consumer = _consumer(sessionmaker, FakeProducer(auto_ack=True))
    await asyncio.wait_for(consumer._partition(_messages((31, "CREATE", 1))), 10)
    async with sessionmaker() as session:
        first = await store.find_customer_by_external_id(session, "31")
    assert first is not None
    messages = _messages(
        (30, "CREATE", 1),
        (30, "UPDATE", 2),
        (31, "DELETE", 1),
        (31, "CREATE", 2),
        (31, "UPDATE", 3),
        first_offset=200,
    )
    assert await asyncio.wait_for(consumer._partition(messages), 10) == messages[-1].offset
    async with sessionmaker() as session:
        made = await store.find_customer_by_external_id(session, "30")
        again = await store.find_customer_by_external_id(session, "31")
        versions = (
            await session.scalar(
                select(ledger.EventVersion.version).where(ledger.EventVersion.external_id == "30")
            ),
            await ledger.applied_version(session, "31"),
        )
    assert made is not None and made.first_name == "v2"
    assert again is not None and again.first_name == "v3" and again.id != first.id
    assert versions == (2 * 2, 3 * 2)
    assert (await _log(sessionmaker))[1:] == [
        ("30", "POST", 201),
        ("30", "PUT", 200),
        ("31", "DELETE", 204),
        ("31", "POST", 201),
        ("31", "PUT", 200),
    ]


async def test_the_runs_of_partitions_settled_together_share_one_transaction(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    producer = FakeProducer(auto_ack=True)
    consumer = _consumer(sessionmaker, producer)
    transactions = 0

    def count(_connection: Any) -> None:
        nonlocal transactions
        transactions += 1

    event.listen(engine.sync_engine, "begin", count)
    try:
        partitions: list[Awaitable[int | None]] = [
            consumer._partition(_messages((20 + p, "CREATE", 1), (20 + p, "UPDATE", 2)))
            for p in range(4)
        ]
        settled = await asyncio.wait_for(asyncio.gather(*partitions), 10)
    finally:
        event.remove(engine.sync_engine, "begin", count)
    assert settled == [101, 101, 101, 101]
    assert transactions == 1
    assert len(await _log(sessionmaker)) == 8


async def test_a_run_replaces_a_stored_record_in_place_and_raises_its_version(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A record and version row stored by an earlier run are updated where they are: the
    same CRM id and creation time, the run's last write, the newest version."""
    consumer = _consumer(sessionmaker, FakeProducer(auto_ack=True))
    await asyncio.wait_for(consumer._partition(_messages((41, "CREATE", 1), (42, "CREATE", 1))), 10)
    async with sessionmaker() as session:
        stored = await store.find_customer_by_external_id(session, "41")
    assert stored is not None
    messages = _messages((41, "UPDATE", 2), (41, "UPDATE", 3), first_offset=300)
    assert await asyncio.wait_for(consumer._partition(messages), 10) == messages[-1].offset
    async with sessionmaker() as session:
        record = await store.find_customer_by_external_id(session, "41")
        untouched = await store.find_customer_by_external_id(session, "42")
        versions = (
            await ledger.applied_version(session, "41"),
            await ledger.applied_version(session, "42"),
        )
    assert record is not None and record.id == stored.id and record.first_name == "v3"
    assert record.created_at == stored.created_at and record.updated_at > stored.updated_at
    assert untouched is not None and untouched.first_name == "v1"
    assert versions == (3 * 2, 1 * 2)
    assert (await _log(sessionmaker))[2:] == [("41", "PUT", 200), ("41", "PUT", 200)]
