"""Delivery over Kafka: one outbox request published as an event for the CRM's consumer.

The row becomes one event on `KAFKA_TOPIC`, keyed by the customer id (so one customer's
events stay in one partition, in order), published with `acks=all`:

    {"eventId", "eventType", "customerId", "version", "occurredAt", "customer"}

`eventId` is the row's Idempotency-Key: a publish repeated after a lost acknowledgement
carries the same id, and the consumer drops it. A broker that refuses the event, or is
gone, is a transient failure (`Failed`), recorded and retried by the same engine as a CRM
that is down. A delivered publish removes the rows from the outbox, but the customer
stays `pending` (its `crm_published_version` ahead of `crm_synced_version`) until the
CRM's status event says the version was applied (see `sync.status_consumer`). The sends
that one acknowledgement of the broker wakes note their published versions in one
transaction.
"""

import asyncio
import json
import logging
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import BindParameter, Integer, Table, bindparam, case, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.config import Settings
from customer_service.customers.models import Customer
from customer_service.sync.models import FailedRequest, Operation
from customer_service.sync.outcome import Delivered, Failed, Outcome

log = logging.getLogger(__name__)

EVENT_TYPE_HEADER = "eventType"


def event_of(row: FailedRequest) -> dict[str, Any]:
    """The event that carries `row` (README: the Kafka alternative); `customer` is null for
    a DELETE."""
    occurred = row.created_at.isoformat().replace("+00:00", "Z")
    return {
        "eventId": row.idempotency_key,
        "eventType": str(row.operation),
        "customerId": row.customer_id,
        "version": row.version,
        "occurredAt": occurred,
        "customer": None if row.operation == Operation.DELETE else row.payload,
    }


def encode_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int, wait: float) -> None:
    """Create the topics that do not exist yet (an existing one is left as it is)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=_ms(wait))
    await asyncio.wait_for(admin.start(), wait)
    try:
        existing = set(await asyncio.wait_for(admin.list_topics(), wait))
        missing = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if missing:
            await asyncio.wait_for(admin.create_topics(missing), wait)
            log.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()


async def stop_quietly(client: Any) -> None:
    """Stop an aiokafka client whatever state it is in. Its own tasks may end in
    CancelledError while it stops (a broker gone at the same moment); that is not ours,
    so it runs as a task of its own and only our own cancellation propagates."""
    task = asyncio.ensure_future(client.stop())
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.debug("stopping %s: %s", type(client).__name__, task.exception())


async def rewind_recreated(consumer: Any) -> None:
    """Read again from the start every assigned partition that ends before our position.

    On a real Kafka that never happens; it means the broker lost the topic and it was made
    anew (Tansu's memory storage after a restart), and a consumer left at its old offset
    would skip what the new partition holds until it grows past it."""
    behind = [tp for tp in consumer.assignment() if await _past_the_end(consumer, tp)]
    if behind:
        log.warning("partitions %s were recreated by the broker: reading them again", behind)
        await consumer.seek_to_beginning(*behind)


async def _past_the_end(consumer: Any, tp: Any) -> bool:
    """Is our position past the end of the partition, as the last fetch answered it?

    The high watermark of the fetch responses, not `end_offsets`: Tansu's ListOffsets
    answers one past the first offset of the partition's last record batch, short of the
    end whenever a producer sent more than one record in a batch, which made a consumer
    that had read everything start over. No fetch answered yet: nothing known."""
    highwater = consumer.highwater(tp)
    return highwater is not None and bool(await consumer.position(tp) > highwater)


def _ms(seconds: float) -> int:
    return max(1000, int(seconds * 1000))


_CUSTOMERS = cast(Table, Customer.__table__)
_PUBLISHED = _CUSTOMERS.c.crm_published_version
_VERSION: BindParameter[int] = bindparam("published_version", type_=Integer)
# Only ever raised: a publish acknowledged late must not lower it.
_NOTE_PUBLISHED = (
    update(_CUSTOMERS)
    .where(_CUSTOMERS.c.id == bindparam("customer_id"))
    .values(
        crm_published_version=case(
            (_PUBLISHED.is_(None), _VERSION),
            (_VERSION > _PUBLISHED, _VERSION),
            else_=_PUBLISHED,
        )
    )
)


class _Notes(dict[int, int]):
    """Versions published, by customer, waiting for one transaction to note them all."""

    def __init__(self) -> None:
        super().__init__()
        self.written: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class KafkaSender:
    """Publishes outbox rows; one producer for the process, started lazily and again after
    a failure to start, so a broker that is down at start-up costs nothing but retries."""

    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._timeout = settings.crm_timeout_seconds
        # False until the topics are known to exist, and again after a failed publish: a
        # broker restarted empty (Tansu's memory storage) takes records for a topic it no
        # longer has, which then no consumer group can commit; creating it first avoids that.
        self._topics_ready = False
        # The publishes waiting to be noted (`_note_published`).
        self._notes: _Notes | None = None
        self._noting = asyncio.Lock()

    async def start(self) -> None:
        """Create the missing topics and start the producer; a broker that is down only
        logs a warning (deliveries fail and are retried until it is up)."""
        try:
            await self._ensure_topics()
            await self._ready()
        except Exception as exc:
            servers = self._settings.kafka_bootstrap_servers
            log.warning("Kafka at %s not ready: %s", servers, exc)

    async def _ensure_topics(self) -> None:
        settings = self._settings
        await ensure_topics(
            settings.kafka_bootstrap_servers,
            [settings.kafka_topic, settings.kafka_status_topic],
            settings.kafka_partitions,
            self._timeout,
        )
        self._topics_ready = True

    async def _ready(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is not None:
                return self._producer
            producer = AIOKafkaProducer(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                acks="all",
                enable_idempotence=self._settings.kafka_idempotent_producer,
                request_timeout_ms=_ms(self._timeout),
                retry_backoff_ms=100,
                linger_ms=0,
            )
            try:
                await asyncio.wait_for(producer.start(), self._timeout * 2)
            except BaseException:
                await stop_quietly(producer)
                raise
            self._producer = producer
            return producer

    async def send(self, row: FailedRequest, crm_id: str | None) -> Outcome:
        """Publish `row`; never raises: a refusal or a missing broker is `Failed`.

        `Delivered(None)`: the CRM id and the synced version come later, from the status
        topic, once the CRM has applied the event."""
        del crm_id  # the CRM's consumer finds the record by externalId
        try:
            if not self._topics_ready:
                await self._ensure_topics()
            producer = await self._ready()
            await asyncio.wait_for(
                producer.send_and_wait(
                    self._settings.kafka_topic,
                    key=str(row.customer_id).encode(),
                    value=encode_event(event_of(row)),
                    headers=[(EVENT_TYPE_HEADER, str(row.operation).encode())],
                ),
                self._timeout * 2 + 1,
            )
        except Exception as exc:
            # TimeoutError, KafkaError, a connection refused at start: all transient.
            self._topics_ready = False
            return Failed(f"Kafka publish failed: {type(exc).__name__}: {exc}".rstrip(": "))
        try:
            await self._note_published(row.customer_id, row.version)
        except Exception:
            # The event is out; at worst the customer shows synced a moment early.
            log.warning("could not note the publish of request %s", row.id, exc_info=True)
        return Delivered(None)

    async def _note_published(self, customer_id: int, version: int) -> None:
        """Raise the customer's `crm_published_version` to `version`, in a transaction
        shared with every publish that asks meanwhile: the acknowledgement of one produce
        request wakes all the sends it carried at once."""
        notes = self._notes
        if notes is None:
            notes = self._notes = _Notes()
        notes[customer_id] = max(version, notes.get(customer_id, version))
        async with self._noting:
            if not notes.written.done():
                # Let the other sends, woken by the same acknowledgement, ask first.
                await asyncio.sleep(0)
                self._notes = None
                try:
                    await self._write_notes(notes)
                except Exception as exc:
                    notes.written.set_exception(exc)
                except BaseException:
                    notes.written.cancel()
                    raise
                else:
                    notes.written.set_result(None)
        notes.written.result()

    async def _write_notes(self, notes: _Notes) -> None:
        rows = [{"customer_id": c, "published_version": v} for c, v in notes.items()]
        async with self._sessionmaker() as session, session.begin():
            connection = await session.connection()
            await connection.execute(_NOTE_PUBLISHED, rows)

    async def ping(self) -> bool:
        """Does the broker answer a metadata request now?"""
        try:
            if not self._topics_ready:
                await self._ensure_topics()
            producer = await self._ready()
            await asyncio.wait_for(producer.client.fetch_all_metadata(), self._timeout)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        if self._producer is not None:
            await stop_quietly(self._producer)
            self._producer = None
