"""`crm-mock consume`: the CRM's side of the Kafka alternative.

Reads the customer events of `KAFKA_TOPIC` in the consumer group `KAFKA_GROUP_ID` and
applies each to the CRM's store, as the HTTP API would have:

- **Order.** A partition's events are applied in offset order; a customer's events all
  share one partition (the key is the customer id), so a retried event is never overtaken
  by that customer's next one.
- **Runs.** Consecutive events of a partition are applied in one transaction (a run, at
  most `RUN_MAX_EVENTS`), and the runs of the partitions fetched together share it. A run
  stops at the first event the fault switch refuses (that attempt logged), before an
  event whose customer has an open dead letter, and before its first event while the
  switch adds latency; that event is then settled alone, with the retries below, and the
  next run starts after it.
- **Retries.** An apply that fails for a passing reason (the fault switch says the CRM is
  down, or a random error, or a database hiccup) is retried with backoff (0.1 s doubling
  to 30 s, but at once when the switch turns healthy) up to `KAFKA_MAX_ATTEMPTS`.
- **Dead letters.** An event that cannot be applied (invalid, refused for good by a 4xx
  fault other than 408, 409, 425 and 429, or out of attempts) is published to
  `KAFKA_DLQ_TOPIC` with `error` and `attempts` headers and kept in `crm_dead_letters`.
  That customer's later events follow it there (they are never applied over it) until an
  operator runs `crm-mock dlq replay`.
- **Status.** After each event, `{"eventId", "customerId", "version", "status":
  "applied" | "dead", "crmId", "error"}` goes to `KAFKA_STATUS_TOPIC`, keyed by customer.
  It is handed to the producer without waiting for the broker, in the partition's order;
  the acknowledgements are awaited together before the offsets are committed. A status
  the broker refused is published again (with retries), and so is each later one of that
  customer, after it.
- **Offsets** are committed only once every event before them was applied or
  dead-lettered and its status event acknowledged by the broker, so a consumer killed at
  any instant loses nothing; what it redoes changes nothing, as an event whose version
  the CRM holds already is skipped.

Each attempt is logged in `_requests` like the HTTP call it stands for (POST, PUT or
DELETE, the status it came to, `idempotencyKey` = eventId, `body` = the event); a
skipped duplicate is logged with 409. The fault switch is read from the database (see
`ledger`) at the start of every transaction that makes attempts, once for a whole run, so
a change governs the consumer within one run's transaction (milliseconds).
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_mock import ledger, store
from crm_mock.applier import Applied, Applier, Held, Refused, Result
from crm_mock.config import CrmSettings
from crm_mock.events import CustomerEvent, InvalidEvent, external_id_of, parse_event, status_event

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 30.0
# How often a waiting retry looks whether the switch turned healthy.
SWITCH_POLL_SECONDS = 0.2
DUPLICATE_STATUS = 409
COMMIT_TIMEOUT_SECONDS = 5.0
STOP_GRACE_SECONDS = 5.0
# While idle, how often to look whether the broker lost (and recreated) the topic.
REWIND_CHECK_SECONDS = 1.0
# Tansu 0.6 (the broker of the tests, the bench and `make run-kafka`) holds a fetch to its
# max wait even when it found records (under 250 ms it sleeps out what is left), so the
# wait is a floor on the lag of every event. Alone at 400 events/s: 50 ms -> p50 14 /
# p99 28 ms from publish to fetch, 10 ms -> 3 / 8 ms; idle, a consumer and the broker
# then spend 3 % and 4 % of a core on empty fetches (1 % and 2 % at 50 ms). A real
# Kafka answers a fetch as soon as it has records: there the wait only paces idle polls.
FETCH_MAX_WAIT_MS = 10


def backoff(attempts: int) -> float:
    """Seconds to wait after the n-th failed attempt."""
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempts - 1)))


# The most events applied in one transaction: the SQLite write lock, which the CRM's HTTP
# server waits for, is held that much longer.
RUN_MAX_EVENTS = 50


@dataclass(frozen=True)
class _SentStatus:
    """A status event handed to the producer, not yet known to be acknowledged."""

    offset: int
    key: bytes
    value: bytes
    future: asyncio.Future[Any]


def _parse_message(message: Any) -> CustomerEvent | InvalidEvent:
    try:
        return parse_event(message.value)
    except InvalidEvent as exc:
        return exc


def _run_ahead(
    parsed: Sequence[CustomerEvent | InvalidEvent], position: int
) -> list[CustomerEvent]:
    """The valid events from `position` on, up to the next invalid one (at most
    `RUN_MAX_EVENTS`)."""
    run: list[CustomerEvent] = []
    for item in parsed[position : position + RUN_MAX_EVENTS]:
        if isinstance(item, InvalidEvent):
            break
        run.append(item)
    return run


class Stopping(Exception):
    """The consumer was asked to stop while an event was still unsettled."""


class CrmConsumer:
    """The consumer loop; `stop` makes it finish between events and leave the group."""

    def __init__(
        self, settings: CrmSettings, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._applier = Applier(sessionmaker)
        self._stop = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Consume until `stop`; reconnects after the broker goes away.

        After `stop`, the event in hand gets `STOP_GRACE_SECONDS` to settle; then (say the
        broker is gone and a join or a publish waits for it) the work is cancelled: what
        was not committed is read again by the next consumer."""
        work = asyncio.create_task(self._sessions(), name="crm-consumer")
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                await asyncio.wait({work}, timeout=STOP_GRACE_SECONDS)
        finally:
            for task in (work, stopped):
                task.cancel()
            await asyncio.wait({work, stopped})

    async def _sessions(self) -> None:
        while not self._stop.is_set():
            try:
                await self._session()
            except Stopping:
                return
            except Exception as exc:
                log.warning("consumer: %s; reconnecting", exc)
                await self._pause(1.0)

    async def _session(self) -> None:
        settings = self._settings
        await ensure_topics(settings)
        session_ms = int(settings.kafka_session_timeout_seconds * 1000)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=settings.kafka_idempotent_producer,
            linger_ms=0,
            request_timeout_ms=5000,
        )
        consumer = AIOKafkaConsumer(
            settings.kafka_topic,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=settings.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A long outage holds a partition's event in retries; stay in the group.
            max_poll_interval_ms=3_600_000,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=session_ms // 3,
        )
        try:
            await producer.start()
            self._producer = producer
            await consumer.start()
            log.info("consuming %s as group %s", settings.kafka_topic, settings.kafka_group_id)
            loop = asyncio.get_running_loop()
            checked = loop.time()
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                if not batches and loop.time() - checked > REWIND_CHECK_SECONDS:
                    checked = loop.time()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(rewind_recreated(consumer), 5)
                done = await asyncio.gather(
                    *(self._partition(messages) for messages in batches.values())
                )
                offsets = {
                    partition: last + 1
                    for partition, last in zip(batches, done, strict=True)
                    if last is not None
                }
                if offsets:
                    # A broker restarted empty (memory storage) refuses commits for topics it
                    # lost, and aiokafka retries forever: start over, recreating the topics.
                    await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_SECONDS)
        finally:
            self._producer = None
            await stop_quietly(consumer)
            await stop_quietly(producer)

    async def _partition(self, messages: list[Any]) -> int | None:
        """Settle a partition's messages in order; the offset of the last one settled whose
        status event, and every earlier one's, the broker has acknowledged.

        Runs of valid events are applied a transaction each (`Applier.apply_run`); the
        first event a run did not apply is settled on its own (`_settle`), then the next
        run starts after it. Status events are sent without waiting for each one's
        acknowledgement, and confirmed together at the end (`_confirm`)."""
        parsed = [_parse_message(message) for message in messages]
        sent: list[_SentStatus] = []
        settled = None
        position = 0
        try:
            while position < len(messages) and not self._stop.is_set():
                run = _run_ahead(parsed, position)
                try:
                    results = await self._applier.apply_run(run) if run else []
                except Exception:
                    log.warning("a run of %s events failed; one at a time", len(run), exc_info=True)
                    results = []
                for event, result in zip(run, results, strict=False):
                    message = messages[position]
                    if isinstance(result, Applied):
                        await self._send_status(sent, message, event, "applied", result.crm_id)
                    else:
                        await self._settle(message, parsed[position], sent, first=result)
                    settled = message.offset
                    position += 1
                if not results:
                    # Nothing attempted: the first event goes on its own.
                    await self._settle(messages[position], parsed[position], sent)
                    settled = messages[position].offset
                    position += 1
        except Stopping:
            pass
        unconfirmed = await self._confirm(sent)
        if unconfirmed is None:
            return settled
        return unconfirmed - 1 if unconfirmed > messages[0].offset else None

    async def _settle(
        self,
        message: Any,
        parsed: CustomerEvent | InvalidEvent,
        sent: list[_SentStatus],
        first: Result | None = None,
    ) -> None:
        """Apply one event, retrying, until it is applied or dead-lettered; `first` is the
        result of an attempt made already (in a run)."""
        if isinstance(parsed, InvalidEvent):
            await self._dead_letter(message, None, str(parsed), 1, sent)
            return
        event = parsed
        attempts = 0 if first is None else 1
        result = first
        while True:
            if result is None:
                attempts += 1
                try:
                    result = await self._applier.apply(event)
                except Exception as exc:
                    log.warning("apply of event %s failed", event.event_id, exc_info=True)
                    result = Refused(f"{type(exc).__name__}: {exc}", permanent=False)
            if isinstance(result, Applied):
                await self._send_status(sent, message, event, "applied", result.crm_id)
                return
            if isinstance(result, Held):
                error = f"held behind dead letter {result.letter_id} of this customer"
                await self._dead_letter(message, event, error, attempts, sent)
                return
            if result.permanent or attempts >= self._settings.kafka_max_attempts:
                await self._dead_letter(message, event, result.error, attempts, sent)
                return
            await self._wait_to_retry(attempts)
            result = None

    async def _wait_to_retry(self, attempts: int) -> None:
        """Back off, but retry at once when the fault switch turns healthy."""
        loop = asyncio.get_running_loop()
        until = loop.time() + backoff(attempts)
        was_healthy = await self._applier.healthy()
        while loop.time() < until:
            await self._pause(min(SWITCH_POLL_SECONDS, until - loop.time()))
            if self._stop.is_set():
                raise Stopping
            if not was_healthy and await self._applier.healthy():
                return
        if self._stop.is_set():
            raise Stopping

    async def _dead_letter(
        self,
        message: Any,
        event: CustomerEvent | None,
        error: str,
        attempts: int,
        sent: list[_SentStatus],
    ) -> None:
        raw: bytes = message.value or b""
        external_id = event.external_id if event else external_id_of(message.key)
        event_id = (
            event.event_id
            if event
            else f"offset:{message.topic}:{message.partition}:{message.offset}"
        )
        letter = ledger.DeadLetter(
            event_id=event_id,
            external_id=external_id,
            version=event.version if event else None,
            event=raw.decode("utf-8", errors="replace"),
            error=error[:2000],
            attempts=attempts,
            dead_at=store.utc_now(),
        )
        async with self._sessionmaker() as session, session.begin():
            await ledger.add_letter(session, letter)
        headers = [("error", error.encode()), ("attempts", str(attempts).encode())]
        if event is not None:
            headers.append(("eventType", event.event_type.encode()))
        await self._publish(self._settings.kafka_dlq_topic, message.key, raw, headers)
        log.warning("event %s dead-lettered after %s attempts: %s", event_id, attempts, error)
        if event is not None:
            await self._send_status(sent, message, event, "dead", None, error)

    async def _send_status(
        self,
        sent: list[_SentStatus],
        message: Any,
        event: CustomerEvent,
        status: str,
        crm_id: str | None,
        error: str | None = None,
    ) -> None:
        """Hand the event's status to the producer; `_confirm` waits for the broker."""
        producer = self._producer
        if producer is None:
            raise Stopping
        value = status_event(
            event.event_id, event.customer_id, event.version, status, crm_id, error
        )
        key = event.external_id.encode()
        future = await producer.send(self._settings.kafka_status_topic, key=key, value=value)
        sent.append(_SentStatus(message.offset, key, value, future))

    async def _confirm(self, sent: list[_SentStatus]) -> int | None:
        """Wait until the broker has acknowledged every status in `sent`; None when it has,
        else (the consumer is stopping) the offset of the first event whose status it has
        not.

        A status the producer could not deliver is published again with `_publish`'s
        retries, and so is every later one of that customer, after it: the customer's
        last status on the topic is then its newest, whatever failed in between."""
        failed: set[bytes] = set()
        for status in sent:
            try:
                if status.key not in failed:
                    try:
                        await status.future
                        continue
                    except Exception as exc:
                        log.warning("status of offset %s not acknowledged: %s", status.offset, exc)
                        failed.add(status.key)
                await self._publish(self._settings.kafka_status_topic, status.key, status.value, [])
            except Stopping:
                return status.offset
        return None

    async def _publish(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        """Publish, retrying until the broker takes it: the offset waits for it."""
        attempts = 0
        while True:
            attempts += 1
            producer = self._producer
            if producer is None:
                raise Stopping
            try:
                await producer.send_and_wait(topic, key=key, value=value, headers=headers)
                return
            except Exception as exc:
                log.warning("publish to %s failed: %s", topic, exc)
                if attempts >= 5:
                    raise
                await self._pause(backoff(attempts))
                if self._stop.is_set():
                    raise Stopping from exc

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


async def stop_quietly(client: Any) -> None:
    """Stop an aiokafka client whatever state it is in. Its own tasks may end in
    CancelledError while it stops (a broker gone at the same moment); that is not ours,
    so it runs as a task of its own and only our own cancellation propagates."""
    task = asyncio.ensure_future(client.stop())
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.debug("stopping %s: %s", type(client).__name__, task.exception())


async def rewind_recreated(consumer: AIOKafkaConsumer) -> None:
    """Read again from the start every assigned partition that ends before our position.

    On a real Kafka that never happens; it means the broker lost the topic and it was made
    anew (Tansu's memory storage after a restart), and a consumer left at its old offset
    would skip the events the new partition holds until it grows past it."""
    behind = [tp for tp in consumer.assignment() if await _past_the_end(consumer, tp)]
    if behind:
        log.warning("partitions %s were recreated by the broker: reading them again", behind)
        await consumer.seek_to_beginning(*behind)


async def _past_the_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    """Is our position past the end of the partition, as the last fetch answered it?

    The high watermark of the fetch responses, not `end_offsets`: Tansu's ListOffsets
    answers one past the first offset of the partition's last record batch, short of the
    end whenever a producer sent more than one record in a batch, which made a consumer
    that had read everything start over. No fetch answered yet: nothing known."""
    highwater = consumer.highwater(tp)
    return highwater is not None and await consumer.position(tp) > highwater


async def ensure_topics(settings: CrmSettings) -> None:
    """Create the consumer's topics that are missing (`KAFKA_PARTITIONS` each)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=5000
    )
    await admin.start()
    try:
        wanted = [settings.kafka_topic, settings.kafka_status_topic, settings.kafka_dlq_topic]
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, settings.kafka_partitions, 1) for t in wanted if t not in existing]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()
