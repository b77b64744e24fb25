"""Kafka mode: what the CRM did with each event, read back from `KAFKA_STATUS_TOPIC`.

The CRM's consumer publishes `{"eventId", "customerId", "version", "status": "applied" |
"dead", "crmId", "error"}` after each event. Here it becomes the customer's `crm` block:
`applied` records the CRM id and raises `crm_synced_version`; `dead` raises
`crm_dead_version`, so the customer shows `dead` until a newer version is applied (an
operator's `crm-mock dlq replay`). Both only ever move forward, so a status read twice,
or late, changes nothing. Either report also confirms the version, and the customer's
older ones: they leave `unconfirmed_events` and are not published again
(`sync.unconfirmed`).

Offsets are committed after the batch is recorded: a crash reads it again.
"""

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from aiokafka import AIOKafkaConsumer
from sqlalchemy import Integer, String, Table, bindparam, func, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.config import Settings
from customer_service.customers.models import Customer
from customer_service.sync import unconfirmed
from customer_service.sync.dbwork import BackgroundDatabase
from customer_service.sync.kafka_admin import ensure_topics, rewind_recreated, stop_quietly
from customer_service.sync.repository import raised_to_version

log = logging.getLogger(__name__)

APPLIED = "applied"
# While idle, how often to look whether the broker lost (and recreated) the topic.
REWIND_CHECK_SECONDS = 1.0
FETCH_MAX_WAIT_MS = 50
DEAD = "dead"


@dataclass(frozen=True)
class CrmStatus:
    customer_id: int
    version: int
    status: str
    crm_id: str | None


def parse_status(raw: bytes | None) -> CrmStatus | None:
    """The status event in `raw`, or None when it is not one (logged and skipped)."""
    try:
        body: Any = json.loads(raw or b"")
        status = CrmStatus(
            customer_id=int(body["customerId"]),
            version=int(body["version"]),
            status=str(body["status"]),
            crm_id=None if body.get("crmId") is None else str(body["crmId"]),
        )
    except (ValueError, TypeError, KeyError):
        return None
    return status if status.status in (APPLIED, DEAD) else None


_customers = cast(Table, Customer.__table__)
# One statement for both kinds of status, run once for a whole batch (executemany): each
# status raises one of the two versions (the other bound NULL, which `raised_to_version`
# leaves as it is), and a status with no CRM id keeps the one the customer has.
_RECORD = (
    update(_customers)
    .where(_customers.c.id == bindparam("b_customer"))
    .values(
        crm_synced_version=raised_to_version(
            _customers.c.crm_synced_version, bindparam("b_applied", type_=Integer)
        ),
        crm_dead_version=raised_to_version(
            _customers.c.crm_dead_version, bindparam("b_dead", type_=Integer)
        ),
        crm_id=func.coalesce(bindparam("b_crm_id", type_=String), _customers.c.crm_id),
    )
)


def _record_params(statuses: list[CrmStatus]) -> list[dict[str, object]]:
    """One row a status, in customer order: the delivery engine's settle locks the customer
    rows it notes in that order too (its UPDATE finds them by primary key), so the two
    never wait for each other in a circle. In the order of the fetch (partition after
    partition) they did: PostgreSQL found the deadlock only after its `deadlock_timeout`
    (1 s), and every delivery waited that long behind the blocked settle."""
    return [
        {
            "b_customer": s.customer_id,
            "b_applied": s.version if s.status == APPLIED else None,
            "b_dead": s.version if s.status == DEAD else None,
            "b_crm_id": s.crm_id if s.status == APPLIED else None,
        }
        for s in sorted(statuses, key=lambda s: (s.customer_id, s.version))
    ]


async def record_statuses(session: AsyncSession, *, statuses: list[CrmStatus]) -> None:
    """Note on each customer (if it still exists) what the CRM did with its version: one
    executemany for the batch, not a statement built and sent per status (the status
    reader was a tenth of the service's CPU at a steady 389 writes/s)."""
    if statuses:
        await session.execute(_RECORD, _record_params(statuses))
    # A status read before the settle that keeps its version commits finds nothing to
    # remove here; the customer row it raised tells the re-publisher that version is
    # confirmed (`unconfirmed.overdue_of`), and a deleted customer's duplicate is
    # reported applied again.
    await unconfirmed.confirm(session, ((s.customer_id, s.version) for s in statuses))


class StatusConsumer:
    """Owns the background task that reads the status topic; reconnects when the broker
    goes away, and stops between batches (never inside a transaction)."""

    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._db = BackgroundDatabase(sessionmaker, slots=1)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="crm-status-consumer")

    async def _run(self) -> None:
        session_ms = int(self._settings.kafka_session_timeout_seconds * 1000)
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(
                self._settings.kafka_status_topic,
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                group_id=f"{self._settings.kafka_status_topic}.customer-service",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # Tansu answers a fetch only at its max wait when nothing is new: keep it short.
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                session_timeout_ms=session_ms,
                heartbeat_interval_ms=session_ms // 3,
            )
            try:
                await ensure_topics(
                    self._settings.kafka_bootstrap_servers,
                    [self._settings.kafka_status_topic],
                    self._settings.kafka_partitions,
                    self._settings.crm_timeout_seconds,
                )
                await consumer.start()
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("CRM status consumer: %s; reconnecting", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
            finally:
                await stop_quietly(consumer)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            if not batches and loop.time() - checked > REWIND_CHECK_SECONDS:
                checked = loop.time()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(rewind_recreated(consumer), 5)
            if not batches:
                continue
            # Every partition of the fetch in one transaction and one commit (not one of
            # each a partition: four a fetch with the default partitions, each taking
            # SQLite's one connection from the API's writes). The statuses only raise
            # versions and confirm, so their order across partitions is free; a failure
            # commits nothing and the fetch is read again.
            messages = [m for partition in batches.values() for m in partition]
            statuses = [s for m in messages if (s := parse_status(m.value)) is not None]
            if skipped := len(messages) - len(statuses):
                log.warning("skipped %s unreadable status events", skipped)
            # Shielded: a close that cancels us never interrupts the transaction.
            await self._db.run(partial(record_statuses, statuses=statuses))
            # A broker restarted empty refuses commits for the topic it lost, and aiokafka
            # retries forever: start over (the topic is created again) instead.
            offsets = {partition: got[-1].offset + 1 for partition, got in batches.items()}
            await asyncio.wait_for(consumer.commit(offsets), 5)

    async def close(self, grace: float = 5.0) -> None:
        """Stop after the batch in hand; cancel only if it takes longer than `grace`."""
        self._stopping.set()
        if self._task is None:
            return
        await asyncio.wait({self._task}, timeout=grace)
        if not self._task.done():
            self._task.cancel()
        await asyncio.wait({self._task})
        await self._db.drain()
