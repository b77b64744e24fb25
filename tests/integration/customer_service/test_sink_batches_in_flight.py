"""The sink's batches in flight at once (`customer_service.sink.runner`, BATCHES_IN_FLIGHT),
in this process on the real broker, with a connector whose calls the test holds: a batch
whose CRM call hangs keeps neither other customers waiting nor its own customer's later
events from waiting behind it; a stop settles and commits the batches in hand.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka_support import Broker, Topics, read_topic
from support import eventually

from customer_service.config import Settings
from customer_service.db import create_sessionmaker, engine_for
from customer_service.migrate import migrate
from customer_service.sink.runner import BATCHES_IN_FLIGHT, Sink
from customer_service.sync.connector import Change
from customer_service.sync.hold import HoldReason
from customer_service.sync.outcome import Delivered, Outcome

HELD = 1  # the customer whose calls hang until the test lets them go


class HeldConnector:
    """Answers every change delivered, except that a call holding customer HELD waits for
    `release`; records each call's (customer, version) pairs as it starts."""

    batch_size = 10
    calls_in_flight = 8
    confirms_later = False

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []
        self.release = asyncio.Event()

    async def start(self, serving: bool) -> None:
        del serving

    async def close(self) -> None:
        return None

    async def probe(self) -> HoldReason | None:
        return None

    def reader(self) -> Any:
        raise NotImplementedError

    async def send(self, changes: Sequence[Change]) -> list[Outcome]:
        self.calls.append([(c.customer_id, c.request.version) for c in changes])
        if any(c.customer_id == HELD for c in changes):
            await self.release.wait()
        return [Delivered(f"crm-{c.customer_id}") for c in changes]

    def sent(self, customer_id: int) -> list[int]:
        """The versions sent for `customer_id`, in the order their calls started."""
        return [v for call in self.calls for c, v in call if c == customer_id]


def _event(customer_id: int, version: int) -> bytes:
    body = {
        "eventId": f"e-{customer_id}-{version}",
        "eventType": "CREATE" if version == 1 else "UPDATE",
        "customerId": customer_id,
        "version": version,
        "occurredAt": "2026-12-08T03:00:00Z",
        "customer": {
            "externalId": str(customer_id),
            "firstName": "Ada",
            "lastName": f"v{version}",
            "email": f"ada{customer_id}@example.com",
            "phone": None,
            "address": "12 St James's Square, London, GB",
        },
    }
    return json.dumps(body).encode()


async def _publish(broker: Broker, topic: str, events: list[tuple[int, int]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for customer_id, version in events:
            await producer.send_and_wait(
                topic, key=str(customer_id).encode(), value=_event(customer_id, version)
            )
    finally:
        await producer.stop()


@asynccontextmanager
async def _sink(
    broker: Broker, topics: Topics, tmp_path: Path, connector: HeldConnector
) -> AsyncIterator[Sink]:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'sink.db'}"
    await migrate(database_url)
    settings = Settings(
        database_url=database_url,
        kafka_bootstrap_servers=broker.bootstrap,
        kafka_topic=topics.events,
        kafka_status_topic=topics.status,
        kafka_dlq_topic=topics.dlq,
        kafka_sink_group_id=topics.group,
        kafka_idempotent_producer=False,
        kafka_session_timeout_seconds=2,
    )
    engine = engine_for(settings)
    sink = Sink(settings, create_sessionmaker(engine), connector)  # type: ignore[arg-type]
    running = asyncio.create_task(sink.run())
    try:
        yield sink
    finally:
        sink.stop()
        await asyncio.wait_for(running, 30)
        await engine.dispose()


def _statuses(messages: list[Any]) -> list[tuple[int, int]]:
    found = [json.loads(m.value) for m in messages]
    return [(s["customerId"], s["version"]) for s in found if s["status"] == "applied"]


async def test_a_hung_batch_keeps_other_customers_going_and_its_own_customer_behind_it(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    assert BATCHES_IN_FLIGHT >= 2
    topics = Topics.fresh()
    connector = HeldConnector()
    async with _sink(kafka_broker, topics, tmp_path, connector):
        # The held customer's create goes first, alone: its batch hangs in the CRM call.
        await _publish(kafka_broker, topics.events, [(HELD, 1)])
        await eventually(lambda: _true(connector.sent(HELD) == [1]), within=30)
        # Meanwhile: its update, and other customers' events, on the same partition.
        await _publish(kafka_broker, topics.events, [(HELD, 2), (2, 1), (3, 1), (2, 2)])
        # Other customers are delivered, each in order, while the first batch still hangs.
        await eventually(lambda: _true(connector.sent(2) == [1, 2]), within=30)
        assert connector.sent(3) == [1]
        statuses = await read_topic(kafka_broker, topics.status, at_least=3)
        applied = _statuses(statuses)
        assert sorted(applied) == [(2, 1), (2, 2), (3, 1)]
        assert [s for s in applied if s[0] == 2] == [(2, 1), (2, 2)]
        # The held customer's update waits behind its create, unsent.
        assert connector.sent(HELD) == [1]
        connector.release.set()
        await eventually(lambda: _true(connector.sent(HELD) == [1, 2]), within=30)
        statuses = await read_topic(kafka_broker, topics.status, at_least=5)
        applied = _statuses(statuses)
        assert [s for s in applied if s[0] == HELD] == [(HELD, 1), (HELD, 2)]
        assert sorted(applied) == [(HELD, 1), (HELD, 2), (2, 1), (2, 2), (3, 1)]


async def test_a_stop_settles_and_commits_every_batch_in_hand(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    topics = Topics.fresh()
    connector = HeldConnector()
    async with _sink(kafka_broker, topics, tmp_path, connector) as sink:
        await _publish(kafka_broker, topics.events, [(HELD, 1)])
        await eventually(lambda: _true(connector.sent(HELD) == [1]), within=30)
        await _publish(kafka_broker, topics.events, [(2, 1)])
        await eventually(lambda: _true(connector.sent(2) == [1]), within=30)
        sink.stop()
        # The stop waits for the hung batch (within its grace) rather than dropping it.
        await asyncio.sleep(0.5)
        connector.release.set()
    statuses = await read_topic(kafka_broker, topics.status, at_least=2)
    assert sorted(_statuses(statuses)) == [(HELD, 1), (2, 1)]
    assert await _committed(kafka_broker, topics) == 2


async def _committed(broker: Broker, topics: Topics) -> int:
    """The group's committed offsets over the topic's partitions, summed: the number of
    events committed (each partition's offsets start at 0)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=topics.group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topics.events) or set()
        total = 0
        for partition in partitions:
            committed = await consumer.committed(TopicPartition(topics.events, partition))
            total += committed or 0
        return total
    finally:
        await consumer.stop()


async def _true(value: bool) -> bool:
    return value
