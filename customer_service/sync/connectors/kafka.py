"""`SYNC_MODE=kafka`: each change published as an event for the CRM's consumer.

The row becomes one event on `KAFKA_TOPIC`, keyed by the customer id (so one customer's
events stay in one partition, in order), published with `acks=all`:

    {"eventId", "eventType", "customerId", "version", "occurredAt", "customer"}

`eventId` is the row's Idempotency-Key: a publish repeated after a lost acknowledgement
carries the same id, and the consumer drops it. A broker that refuses the event, or is
gone, is a transient failure (`Failed`), recorded and retried by the same engine as a CRM
that is down. A delivered publish removes the rows from the outbox, but the customer
stays `pending` (its `crm_published_version`, noted by the engine when it settles the
batch, ahead of `crm_synced_version`) until the CRM's status event says the version was
applied (see `sync.status_consumer`, which this connector runs in the service). The
version published stays the service's until then (`sync.unconfirmed`): one the CRM has
not confirmed within KAFKA_CONFIRM_SECONDS is published again (`sync.republisher`, also
run here), so a broker that loses an event loses nothing. A batch's events are published
at once: the producer packs them into few produce requests.

The probe plays the CRM probe's part: while deliveries are failing it asks the broker
for its metadata every `RECOVERY_PROBE_SECONDS`.

Reconciliation reads the CRM the events end in, not the broker: the `reader` of the
connector `CRM_CONNECTOR` names (`build_connector(..., crm=True)`, as `customer-service
sink` delivers through), so with HubSpot or Salesforce behind the sink it pages their
contacts, and `CRM_BASE_URL` (the mock's own API) is read only with `CRM_CONNECTOR=mock`.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.config import Settings
from customer_service.crm.client import CrmClient
from customer_service.crm.mapper import address_parts_of, to_mock_record
from customer_service.reconciliation.records import CrmRecords
from customer_service.sync.connector import CallObserver, Change, Connector, build_connector
from customer_service.sync.hold import HoldKind, HoldReason
from customer_service.sync.kafka_admin import ensure_topics, ms, stop_quietly
from customer_service.sync.models import Operation, OutboxRow
from customer_service.sync.outcome import Delivered, Failed, Outcome
from customer_service.sync.republisher import Republisher
from customer_service.sync.status_consumer import StatusConsumer

log = logging.getLogger(__name__)

EVENT_TYPE_HEADER = "eventType"


def event_of(row: OutboxRow) -> dict[str, Any]:
    """The event that carries `row` (README: the Kafka alternative); `customer` is null for
    a DELETE. `addressParts` (the address part by part, null for a DELETE) is ours, beyond
    SPEC section 5's fields: `customer-service sink` needs it for CRMs that keep the parts
    apart; other consumers ignore it."""
    occurred = row.created_at.isoformat().replace("+00:00", "Z")
    return {
        "eventId": row.idempotency_key,
        "eventType": str(row.operation),
        "customerId": row.customer_id,
        "version": row.version,
        "occurredAt": occurred,
        "customer": None
        if row.operation == Operation.DELETE
        else to_mock_record(row.payload or {}),
        "addressParts": address_parts_of(row.payload),
    }


def encode_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


# Publishes in flight for live deliveries. A publish waits for the broker's
# acknowledgement of the produce request that carries it, and the producer packs every
# publish waiting meanwhile into the next one, so a slot is cheap; with 64, a steady 389
# writes/s on PostgreSQL outran what 64 publishes per acknowledgement could carry (the
# outbox grew to 2,000 in 15 s, lag p50 1.4-2.8 s).
PUBLISHES_IN_FLIGHT = 512
# Events per batch handed to the producer at once.
BATCH_SIZE = 500


class KafkaConnector:
    """Publishes outbox rows; one producer for the process, started lazily and again after
    a failure to start, so a broker that is down at start-up costs nothing but retries."""

    confirms_later = True
    batch_size = BATCH_SIZE
    calls_in_flight = PUBLISHES_IN_FLIGHT

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        on_call: CallObserver | None = None,
    ) -> None:
        self._settings = settings
        # Reconciliation reads the CRM the events reach: the one CRM_CONNECTOR names (the
        # mock's own API behind `crm-mock consume`, or HubSpot or Salesforce behind
        # `customer-service sink`), through that connector's reader. It never sends.
        self._crm: Connector = build_connector(settings, sessionmaker, on_call, crm=True)
        self._status = StatusConsumer(settings, sessionmaker)
        # What the broker took stays ours until the CRM confirms it (`sync.republisher`).
        self._republisher = Republisher(settings, sessionmaker, self.publish_again)
        self._serving = False
        self._starting_task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._timeout = settings.crm_timeout_seconds
        # False until the topics are known to exist, and again after a failed publish: a
        # broker restarted empty (Tansu's memory storage) takes records for a topic it no
        # longer has, which then no consumer group can commit; creating it first avoids that.
        self._topics_ready = False

    async def start(self, serving: bool) -> None:
        """Topics and producer, in the background (a broker that is down or hung must not
        hold up start-up); `serving`: the reader of the status topic too."""
        await self._crm.start(serving=False)
        self._starting_task = asyncio.create_task(self.prepare(), name="kafka-start")
        self._serving = serving
        if serving:
            self._status.start()
            self._republisher.start()

    def reader(self) -> "CrmClient | CrmRecords":
        return self._crm.reader()

    async def prepare(self) -> None:
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
                request_timeout_ms=ms(self._timeout),
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

    async def send(self, changes: Sequence[Change]) -> list[Outcome]:
        """Publish the changes' events at once; never raises: a refusal or a missing broker
        is `Failed`. `Delivered(None)`: the CRM id and the synced version come later, from
        the status topic, once the CRM has applied the event."""
        try:
            if not self._topics_ready:
                await self._ensure_topics()
            producer = await self._ready()
        except Exception as exc:
            self._topics_ready = False
            failed = _publish_failed(exc)
            return [failed for _ in changes]
        return await self._publish(producer, changes)

    async def publish_again(self, changes: Sequence[Change]) -> list[Outcome]:
        """`send` for versions the CRM never confirmed (`sync.republisher`): the broker
        may have lost them by restarting empty, so the topics are looked at first (a
        publish to a topic such a broker no longer knows would never be consumed)."""
        self._topics_ready = False
        return await self.send(changes)

    async def _publish(
        self, producer: AIOKafkaProducer, changes: Sequence[Change]
    ) -> list[Outcome]:
        """Every change handed to the producer in turn (`send` only appends it to the
        batch of its partition), then their acknowledgements awaited together under one
        deadline. Plain futures, no task per event: at 400 writes/s on PostgreSQL a
        publish wrapped in its own `wait_for` task spent 20 ms (p50) between the claim and
        the broker's acknowledgement, most of it waiting for the event loop."""
        acknowledged: list[asyncio.Future[Any] | Outcome] = []
        try:
            async with asyncio.timeout(self._timeout * 2 + 1):
                for change in changes:
                    row = change.request  # the CRM's consumer finds the record by externalId
                    try:
                        acknowledged.append(
                            await producer.send(
                                self._settings.kafka_topic,
                                key=str(row.customer_id).encode(),
                                value=encode_event(event_of(row)),
                                headers=[(EVENT_TYPE_HEADER, str(row.operation).encode())],
                            )
                        )
                    except Exception as exc:  # KafkaError: transient, as the others
                        acknowledged.append(_publish_failed(exc))
                futures = [f for f in acknowledged if asyncio.isfuture(f)]
                if futures:
                    await asyncio.wait(futures)
        except TimeoutError as exc:
            timed_out: Exception = exc
        else:
            timed_out = TimeoutError()
        outcomes = [_outcome_of(item, timed_out) for item in acknowledged]
        outcomes += [_publish_failed(timed_out)] * (len(changes) - len(outcomes))
        if any(isinstance(outcome, Failed) for outcome in outcomes):
            self._topics_ready = False
        return outcomes

    async def probe(self) -> HoldReason | None:
        """Does the broker answer a metadata request now?"""
        if await self.ping():
            return None
        bootstrap = self._settings.kafka_bootstrap_servers
        return HoldReason(HoldKind.UNREACHABLE, f"Kafka broker unreachable at {bootstrap}")

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
        if self._starting_task is not None:
            self._starting_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting_task
        if self._serving:
            await self._republisher.close()
            await self._status.close()
        await self._crm.close()
        if self._producer is not None:
            await stop_quietly(self._producer)
            self._producer = None


def _outcome_of(item: "asyncio.Future[Any] | Outcome", timed_out: Exception) -> Outcome:
    """A publish's outcome: delivered once acknowledged; refused, or not acknowledged by
    the deadline, `Failed` (TimeoutError, KafkaError: all transient)."""
    if not asyncio.isfuture(item):
        return item
    if not item.done():
        item.add_done_callback(_answered_late)
        return _publish_failed(timed_out)
    if item.cancelled():
        return _publish_failed(asyncio.CancelledError())
    error = item.exception()
    return Delivered(None) if error is None else _publish_failed(error)


def _answered_late(future: "asyncio.Future[Any]") -> None:
    """An acknowledgement (or refusal) after the deadline: already counted as failed."""
    if not future.cancelled():
        future.exception()


def _publish_failed(exc: BaseException) -> Failed:
    return Failed(f"Kafka publish failed: {type(exc).__name__}: {exc}".rstrip(": "))
