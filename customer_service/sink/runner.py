"""The sink's loop: poll `KAFKA_TOPIC`, deliver through the CRM connector, settle, commit.

A Kafka Connect sink task's loop, one process of the consumer group
`KAFKA_SINK_GROUP_ID` (processes of one group share the partitions):

1. **Poll** (`getmany`): the messages become entries of the `Backlog`.
2. **Batch**: each customer's oldest unsettled event (at most one per customer, none of a
   customer whose event is in flight or waiting for its retry), sent through the
   connector in calls of its `batch_size`, up to its `calls_in_flight` calls at once.
   Before the call, `sink_customers` is read for these customers: an event settled
   before (same eventId, or older) is not sent again, its status is published again.
3. **Settle**, in this order, so a process killed at any instant loses nothing: what
   the CRM refused for good (and what is not an event at all) is published to
   `KAFKA_DLQ_TOPIC` with `error` and `attempts` headers, acknowledged; what was
   delivered or dead-lettered is noted in `sink_customers`; a status event per outcome
   goes to `KAFKA_STATUS_TOPIC`, acknowledged; then
4. **Commit**: each partition up to its first event not yet settled.

Up to `BATCHES_IN_FLIGHT` batches run at once, each steps 2 to 4 on its own (a batch's
customers are in flight until it settles them, so no customer is in two): while one
settles, the next one's calls are out, and the CRM is not kept waiting on the sink's
bookkeeping (phase 13 of `make bench`, PostgreSQL, the HubSpot face: the CRM mock and
the sink took turns, about one core between them, with one batch at a time). The poll
goes on meanwhile, and a batch that ends wakes it (its customers' next events may go).
Commits are taken one at a time, each computed when its turn comes, so a partition's
committed offset never moves back.

A failure that speaks for the CRM as a whole (no answer, 401, 403, 429, 502, 503, 504
for the whole call) holds every send; a probe (`Connector.probe`) every
`RECOVERY_PROBE_SECONDS` asks whether the CRM is back, and then every waiting retry is
due at once. A partition with more than `MAX_UNSETTLED` events read and not settled is
paused until half of them are.

**Rebalances.** When partitions are taken away, the listener waits for the batches in
hand to be settled and committed, then forgets what was read from them: the next owner
starts at the committed offset, and what was settled past it is recognised in
`sink_customers`. No two processes send one partition's events at once (as far as the
group protocol knows: a process whose session expired unseen may finish its call).

**Stopping** (SIGINT, SIGTERM): the batches in hand are settled and committed, then the
process leaves the group; after `STOP_GRACE_SECONDS` the work is cut short, as a kill
would (nothing is lost: it is read again).
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.sink import ledger
from customer_service.sink.backlog import Backlog, Entry
from customer_service.sink.events import (
    APPLIED,
    DEAD,
    CustomerEvent,
    InvalidEvent,
    change_of,
    parse_event,
    status_event,
)
from customer_service.sink.verdict import Again, Applied, Dead, judge, repeat_of
from customer_service.sync.connector import Change, Connector
from customer_service.sync.dbwork import BackgroundDatabase
from customer_service.sync.hold import HoldReason
from customer_service.sync.kafka_admin import ensure_topics, ms, rewind_recreated, stop_quietly
from customer_service.sync.outcome import Failed, Outcome
from customer_service.sync.retry import RetryPolicy

log = logging.getLogger(__name__)

POLL_MS = 200
# Tansu answers a fetch only at its max wait when nothing is new: keep it short.
FETCH_MAX_WAIT_MS = 50
# Events read per poll, at most.
MAX_POLL_RECORDS = 2000
# Batches sent and settled at once (see the module's docstring).
BATCHES_IN_FLIGHT = 2
# Events per batch at least (see `Sink.__init__`).
MIN_BATCH = 500
# Events read and not yet settled per partition before it is paused.
MAX_UNSETTLED = 10_000
COMMIT_TIMEOUT_SECONDS = 5.0
STOP_GRACE_SECONDS = 5.0
# While idle, how often to look whether the broker lost (and recreated) the topic.
REWIND_CHECK_SECONDS = 1.0

SinkEntry = Entry[TopicPartition]


@dataclass
class _Settling:
    """A batch's outcomes on their way to the topics and the ledger."""

    dead_letters: list[tuple[SinkEntry, str, int]]
    statuses: list[tuple[CustomerEvent, str, str | None, str | None]]
    settled: list[ledger.Settled]
    done: list[SinkEntry]


class Sink:
    """One sink process's consumer; `run` until `stop`."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        connector: Connector,
    ) -> None:
        self._settings = settings
        self._db = BackgroundDatabase(sessionmaker, slots=1)
        self._connector = connector
        self._policy = RetryPolicy(
            settings.retry_backoff_base_seconds,
            settings.retry_backoff_max_seconds,
            settings.retry_max_attempts,
        )
        self._calls = asyncio.Semaphore(max(1, connector.calls_in_flight))
        self._stop = asyncio.Event()
        # Held to take a batch from the backlog, and by a rebalance while it waits for the
        # batches in hand (`forget`).
        self._batch_lock = asyncio.Lock()
        self._batches: set[asyncio.Task[None]] = set()
        self._commit_lock = asyncio.Lock()
        self._backlog: Backlog[TopicPartition] = Backlog()
        self._held: HoldReason | None = None
        self._next_probe = 0.0
        # Counts the rebalances that took partitions away.
        self._generation = 0
        # How many events per batch at most: enough for every call in flight, and with one
        # event per call a poll's worth (the calls take turns at the in-flight limit), so
        # a batch's settling (a read, a write, the statuses, a commit) is shared widely.
        self._batch_limit = max(
            MIN_BATCH, max(1, connector.batch_size) * max(1, connector.calls_in_flight)
        )

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Consume until `stop`, reconnecting after the broker goes away."""
        work = asyncio.create_task(self._sessions(), name="sink")
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                await asyncio.wait({work}, timeout=STOP_GRACE_SECONDS)
        finally:
            for task in (work, stopped):
                task.cancel()
            await asyncio.wait({work, stopped})
            await self._db.drain()
        if not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]

    async def _sessions(self) -> None:
        while not self._stop.is_set():
            try:
                await self._session()
            except Exception as exc:
                log.warning("sink: %s; reconnecting", exc)
                await self._pause(1.0)

    async def _session(self) -> None:
        settings = self._settings
        wait = settings.crm_timeout_seconds + 3
        await ensure_topics(
            settings.kafka_bootstrap_servers,
            [settings.kafka_topic, settings.kafka_status_topic, settings.kafka_dlq_topic],
            settings.kafka_partitions,
            wait,
        )
        session_ms = int(settings.kafka_session_timeout_seconds * 1000)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=settings.kafka_idempotent_producer,
            linger_ms=0,
            request_timeout_ms=ms(wait),
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=settings.kafka_sink_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A long CRM outage holds events in retries; stay in the group meanwhile.
            max_poll_interval_ms=3_600_000,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=session_ms // 3,
        )
        consumer.subscribe([settings.kafka_topic], listener=_Rebalance(self))
        self._backlog = Backlog()
        try:
            await producer.start()
            await consumer.start()
            log.info(
                "sink: delivering %s to CRM_CONNECTOR=%s as group %s",
                settings.kafka_topic,
                settings.crm_connector,
                settings.kafka_sink_group_id,
            )
            await self._loop(consumer, producer)
        finally:
            await stop_quietly(consumer)
            await stop_quietly(producer)

    async def _loop(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        loop = asyncio.get_running_loop()
        checked = loop.time()
        poll: asyncio.Task[dict[TopicPartition, list[Any]]] | None = None
        generation = self._generation
        try:
            while not self._stop.is_set():
                if poll is None:
                    generation = self._generation
                    poll = asyncio.create_task(
                        consumer.getmany(
                            timeout_ms=self._poll_timeout_ms(), max_records=MAX_POLL_RECORDS
                        )
                    )
                # Whichever comes first: messages (or the poll's timeout), or a batch's end.
                await asyncio.wait({poll, *self._batches}, return_when=asyncio.FIRST_COMPLETED)
                self._reap_batches()
                if poll.done():
                    batches, poll = poll.result(), None
                    if generation != self._generation:
                        # Partitions were taken away meanwhile: what this poll read may be
                        # theirs, and is read again from the committed offsets by whoever
                        # has them now.
                        continue
                    for partition, messages in batches.items():
                        self._backlog.add(_entry(partition, m) for m in messages)
                    idle = not batches and not self._backlog and not self._batches
                    if idle and loop.time() - checked > REWIND_CHECK_SECONDS:
                        checked = loop.time()
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(rewind_recreated(consumer), 5)
                self._pace_partitions(consumer)
                await self._probe_if_held()
                await self._start_batches(consumer, producer)
            # Stopping: the batches in hand are settled and committed first.
            if self._batches:
                await asyncio.wait(self._batches)
            self._reap_batches()
        finally:
            pending = [task for task in (poll, *self._batches) if task is not None]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            self._batches.clear()

    async def _start_batches(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        """Start batches while a place is free and the backlog has something to send."""
        while len(self._batches) < BATCHES_IN_FLIGHT:
            async with self._batch_lock:
                if self._held is not None:
                    return
                batch = self._backlog.next_batch(utc_now(), self._batch_limit)
                if not batch:
                    return
                self._batches.add(
                    asyncio.create_task(self._deliver(batch, consumer, producer), name="sink-batch")
                )

    def _reap_batches(self) -> None:
        """Forget the batches that ended; one that failed ends the session (it starts over
        from the committed offsets)."""
        for task in [t for t in self._batches if t.done()]:
            self._batches.discard(task)
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _deliver(
        self, batch: list[SinkEntry], consumer: AIOKafkaConsumer, producer: AIOKafkaProducer
    ) -> None:
        await self._batch(batch, producer)
        await self._commit(consumer)

    def _poll_timeout_ms(self) -> int:
        """0 when a batch can go now, else until the next retry or probe (at most POLL_MS);
        a batch's end wakes the loop anyway."""
        loop = asyncio.get_running_loop()
        now = utc_now()
        if self._held is not None:
            return max(0, min(POLL_MS, int((self._next_probe - loop.time()) * 1000)))
        if len(self._batches) < BATCHES_IN_FLIGHT and self._backlog.ready(now):
            return 0
        due = self._backlog.next_due()
        if due is None:
            return POLL_MS
        return max(0, min(POLL_MS, int((due - now).total_seconds() * 1000)))

    def _pace_partitions(self, consumer: AIOKafkaConsumer) -> None:
        paused = consumer.paused()
        for partition in consumer.assignment():
            unsettled = self._backlog.unsettled(partition)
            if partition not in paused and unsettled >= MAX_UNSETTLED:
                consumer.pause(partition)
            elif partition in paused and unsettled < MAX_UNSETTLED // 2:
                consumer.resume(partition)

    async def _probe_if_held(self) -> None:
        loop = asyncio.get_running_loop()
        if self._held is None or loop.time() < self._next_probe:
            return
        reason = await self._connector.probe()
        if reason is not None:
            self._held = reason
            self._next_probe = loop.time() + self._settings.recovery_probe_seconds
            return
        log.warning("sink: the CRM answers again; deliveries resume")
        self._held = None
        self._backlog.pull_forward(utc_now())

    def _hold(self, reason: HoldReason) -> None:
        if self._held is None:
            log.warning("sink: deliveries held (%s): %s", reason.kind, reason.detail)
            loop = asyncio.get_running_loop()
            self._next_probe = loop.time() + self._settings.recovery_probe_seconds
        self._held = reason

    # -- one batch --------------------------------------------------------------------------

    async def _batch(self, batch: list[SinkEntry], producer: AIOKafkaProducer) -> None:
        """Send one batch and settle it (the module's steps 2 and 3)."""
        work = _Settling([], [], [], [])
        events = [e for e in batch if isinstance(e.event, CustomerEvent)]
        for entry in batch:
            if isinstance(entry.event, InvalidEvent):
                work.dead_letters.append((entry, str(entry.event), 1))
                work.done.append(entry)
        known = await self._db.run(
            partial(ledger.settled_of, customer_ids=[_event(e).customer_id for e in events])
        )
        sending: list[tuple[SinkEntry, Change]] = []
        for entry in events:
            event = _event(entry)
            settled = known.get(event.customer_id)
            repeat = repeat_of(event, settled)
            if repeat is not None:
                work.statuses.append((event, repeat.status, repeat.crm_id, repeat.error))
                work.done.append(entry)
                continue
            # A record delete finds its records by the external id (the connector looks
            # them up): the id learnt here may be that of a contact deleted long ago.
            crm_id = settled.crm_id if settled and not event.record_delete else None
            sending.append((entry, change_of(event, entry.offset, crm_id)))
        outcomes = await self._send([change for _, change in sending])
        now = utc_now()
        for (entry, change), outcome in zip(sending, outcomes, strict=True):
            self._judged(entry, change, outcome, now, work)
        await self._settle(producer, work, now)

    def _judged(
        self, entry: SinkEntry, change: Change, outcome: Outcome, now: datetime, work: _Settling
    ) -> None:
        event = _event(entry)
        verdict = judge(
            event, outcome, change.crm_id, self._backlog.retry_of(entry), self._policy, now
        )
        if isinstance(verdict, Applied):
            work.statuses.append((event, APPLIED, verdict.crm_id, None))
            work.settled.append(_settled(event, APPLIED, verdict.crm_id, None))
            work.done.append(entry)
        elif isinstance(verdict, Dead):
            log.warning(
                "event %s (customer %s, version %s) dead-lettered after %s attempts: %s",
                event.event_id,
                event.customer_id,
                event.version,
                verdict.attempts,
                verdict.error,
            )
            work.dead_letters.append((entry, verdict.error, verdict.attempts))
            work.statuses.append((event, DEAD, change.crm_id, verdict.error))
            work.settled.append(_settled(event, DEAD, change.crm_id, verdict.error))
            work.done.append(entry)
        else:
            assert isinstance(verdict, Again)
            log.info(
                "event %s (customer %s) failed (attempt %s): %s",
                event.event_id,
                event.customer_id,
                verdict.retry.attempts,
                verdict.error,
            )
            self._backlog.retry_later(entry, verdict.retry)
            if verdict.hold is not None:
                self._hold(HoldReason(verdict.hold, verdict.error))

    async def _send(self, changes: list[Change]) -> list[Outcome]:
        """The changes in calls of the connector's batch size, concurrently."""
        if not changes:
            return []
        size = max(1, self._connector.batch_size)
        chunks = [changes[i : i + size] for i in range(0, len(changes), size)]

        async def call(chunk: list[Change]) -> list[Outcome]:
            async with self._calls:
                try:
                    return await self._connector.send(chunk)
                except Exception as exc:  # the protocol says never; a bug must not lose events
                    log.warning("connector raised", exc_info=True)
                    failed = Failed(f"connector raised {type(exc).__name__}: {exc}")
                    return [failed for _ in chunk]

        answered = await asyncio.gather(*(call(chunk) for chunk in chunks))
        return [outcome for chunk in answered for outcome in chunk]

    async def _settle(self, producer: AIOKafkaProducer, work: _Settling, now: datetime) -> None:
        """Dead letters, then the ledger, then the statuses, each acknowledged before the
        next; then the entries are settled (their offsets may be committed)."""
        settings = self._settings
        if work.dead_letters:
            await asyncio.gather(
                *(
                    producer.send_and_wait(
                        settings.kafka_dlq_topic,
                        key=entry.key,
                        value=entry.value or b"",
                        headers=_dlq_headers(entry, error, attempts),
                    )
                    for entry, error, attempts in work.dead_letters
                )
            )
        if work.settled:
            await self._db.run(partial(ledger.record, settled=work.settled, now=now))
        sent = [
            await producer.send(
                settings.kafka_status_topic,
                key=str(event.customer_id).encode(),
                value=status_event(event, status, crm_id, error),
            )
            for event, status, crm_id, error in work.statuses
        ]
        await asyncio.gather(*sent)
        for entry in work.done:
            self._backlog.settle(entry)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        # One commit at a time, its offsets taken in its turn: never behind an earlier one.
        async with self._commit_lock:
            assigned = consumer.assignment()
            offsets = {tp: o for tp, o in self._backlog.commits().items() if tp in assigned}
            if not offsets:
                return
            try:
                # A broker restarted empty (memory storage) refuses commits for topics it
                # lost, and aiokafka retries forever: start over, recreating the topics.
                await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_SECONDS)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group rebalanced: whoever reads these events again finds them settled.
                log.info("sink: commit refused (%s); the next owner reads from the last one", exc)
                return
            self._backlog.committed(offsets)

    async def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions taken away: once the batches in hand are settled and committed (no
        new one starts meanwhile), drop what was read from them."""
        async with self._batch_lock:
            self._generation += 1
            in_hand = [task for task in self._batches if not task.done()]
            if in_hand:
                await asyncio.wait(in_hand)
            self._backlog.forget(partitions)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._sink.forget(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("sink: partitions %s", sorted(tp.partition for tp in assigned))


def _entry(partition: TopicPartition, message: Any) -> SinkEntry:
    event: CustomerEvent | InvalidEvent
    try:
        event = parse_event(message.value)
    except InvalidEvent as exc:
        event = exc
    return Entry(partition, message.offset, message.key, message.value, event)


def _event(entry: SinkEntry) -> CustomerEvent:
    assert isinstance(entry.event, CustomerEvent)
    return entry.event


def _settled(event: CustomerEvent, status: str, crm_id: str | None, error: str | None) -> Any:
    return ledger.Settled(event.customer_id, event.rank, event.event_id, status, crm_id, error)


def _dlq_headers(entry: SinkEntry, error: str, attempts: int) -> list[tuple[str, bytes]]:
    headers = [("error", error.encode()), ("attempts", str(attempts).encode())]
    if isinstance(entry.event, CustomerEvent):
        headers.append(("eventType", str(entry.event.operation).encode()))
    return headers
