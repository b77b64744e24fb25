"""Kafka mode: publish again the versions the CRM never confirmed (guarantee 8).

A broker that took an event may still lose it (Tansu's memory storage restarted, a real
cluster's unclean leader election); the CRM's consumer then never reports it, and the
customer would stay `pending` for good. So a published version stays the service's until
the status topic reports it applied or dead (`sync.unconfirmed`), and every
`LOOK_SECONDS` (at most a quarter of KAFKA_CONFIRM_SECONDS) a pass here publishes again,
with the same eventId, each version whose last publish is older than
KAFKA_CONFIRM_SECONDS. The CRM's consumer drops what it applied already (and reports it
applied again), so a version that was only slow costs a duplicate, never a change.

A pass, for up to `PASS_CUSTOMERS` customers, the longest waiting first:

1. in one transaction: claims them in `sync_claims`, as the delivery engine does (so no
   replica's pass, nor any delivery of the customers' newer outbox rows, runs at the same
   time; a customer held elsewhere waits for the next pass), drops the versions their
   customer rows show confirmed already, reads the overdue ones, and gives back the
   claims of the customers left with none;
2. publishes them with no transaction open, in rounds: each customer's oldest overdue
   version in the first round, its next in the second, and so on, each round
   acknowledged before the next, so a customer's versions go again oldest first; a
   customer whose publish fails sends nothing more this pass;
3. in one transaction: notes the versions published again (their wait starts over) and
   gives the claims back.

A replica killed in between loses nothing: the versions stay, their claims expire after
CLAIM_LEASE_SECONDS, and the next pass publishes them again (a duplicate at worst).
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.sync import repository, unconfirmed
from customer_service.sync.connector import Change
from customer_service.sync.dbwork import BackgroundDatabase
from customer_service.sync.models import QueuedRequest
from customer_service.sync.outcome import Delivered, Outcome

log = logging.getLogger(__name__)

# Customers one pass takes (a batch of the Kafka connector).
PASS_CUSTOMERS = 500
# How often to look for overdue versions, at most (a quarter of KAFKA_CONFIRM_SECONDS
# when that is shorter): the look is one indexed query, and it bounds how late past
# KAFKA_CONFIRM_SECONDS a lost version goes again.
LOOK_SECONDS = 1.0

Publish = Callable[[Sequence[Change]], Awaitable[list[Outcome]]]


@dataclass(frozen=True)
class RepublishPass:
    """What one pass did: customers found with overdue versions (some may have been held
    elsewhere), versions published again, and versions whose publish failed (left for a
    later pass)."""

    customers: int = 0
    published: int = 0
    failed: int = 0


def rounds_of(rows: Sequence[QueuedRequest]) -> list[list[QueuedRequest]]:
    """`rows` (each customer's oldest first) in publish rounds: the n-th round holds each
    customer's n-th row, so no customer has two rows in one round."""
    rounds: list[list[QueuedRequest]] = []
    seen: dict[int, int] = {}
    for row in rows:
        position = seen.get(row.customer_id, 0)
        seen[row.customer_id] = position + 1
        if position == len(rounds):
            rounds.append([])
        rounds[position].append(row)
    return rounds


class Republisher:
    """Owns the background task that publishes overdue versions again; stops between
    passes (a pass in flight gets a grace period, then its publishes are cancelled; its
    transactions run to their end: `BackgroundDatabase`)."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        publish: Publish,
    ) -> None:
        self._settings = settings
        self._publish = publish
        self._db = BackgroundDatabase(sessionmaker, slots=1)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.owner = f"republish-{uuid.uuid4().hex[:12]}"

    @property
    def confirm_seconds(self) -> float:
        return self._settings.kafka_confirm_seconds

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kafka-republisher")

    async def _run(self) -> None:
        look = min(LOOK_SECONDS, self.confirm_seconds / 4)
        while not self._stopping.is_set():
            try:
                while not self._stopping.is_set():
                    done = await self.run_pass()
                    # A full pass that published may have left more: go on at once.
                    # Else wait (customers held elsewhere are looked at next time).
                    if done.customers < PASS_CUSTOMERS or done.failed or not done.published:
                        break
            except Exception:
                log.warning("publishing unconfirmed versions again failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), look)

    async def run_pass(self, now: datetime | None = None) -> RepublishPass:
        """One pass (see the module's docstring) over the versions last published more
        than KAFKA_CONFIRM_SECONDS before `now`."""
        now = now or utc_now()
        before = now - timedelta(seconds=self.confirm_seconds)
        customers = await self._db.run(
            partial(unconfirmed.overdue_customers, before=before, limit=PASS_CUSTOMERS)
        )
        if not customers:
            return RepublishPass()
        owner = f"{self.owner}:{uuid.uuid4().hex[:12]}"
        rows = await self._db.run(
            partial(self._claim_and_read, customers=customers, owner=owner, now=now, before=before)
        )
        published: list[int] = []
        failed = 0
        try:
            failed = await self._publish_in_order(rows, owner, published)
        finally:
            await self._db.run(partial(self._settle, published=published, owner=owner))
        claimed = len({row.customer_id for row in rows})
        if published or failed:
            log.info(
                "published again %s versions of %s customers not confirmed within %s s%s",
                len(published),
                claimed,
                self.confirm_seconds,
                f" ({failed} publishes failed; next pass)" if failed else "",
            )
        return RepublishPass(len(customers), len(published), failed)

    async def _claim_and_read(
        self,
        session: AsyncSession,
        customers: list[int],
        owner: str,
        now: datetime,
        before: datetime,
    ) -> list[QueuedRequest]:
        lease = self._settings.claim_lease_seconds
        claimed = await repository.claim(session, customers, owner, now, lease)
        rows = await unconfirmed.overdue_of(session, sorted(claimed), before)
        idle = claimed - {row.customer_id for row in rows}
        if idle:
            await repository.release(session, owner, idle)
        return rows

    async def _publish_in_order(
        self, rows: list[QueuedRequest], owner: str, published: list[int]
    ) -> int:
        """Publish `rows` round by round (`rounds_of`), adding each one the broker took
        to `published`; the number that failed (with the rows after them left out)."""
        loop = asyncio.get_running_loop()
        lease = self._settings.claim_lease_seconds
        renewed = loop.time()
        stopped: set[int] = set()
        failed = 0
        for round_ in rounds_of(rows):
            sendable = [row for row in round_ if row.customer_id not in stopped]
            if not sendable or self._stopping.is_set():
                break
            if loop.time() - renewed > lease / 3:
                await self._db.run(
                    partial(repository.renew, owner=owner, now=utc_now(), lease=lease)
                )
                renewed = loop.time()
            outcomes = await self._publish([Change(row, None) for row in sendable])
            for row, outcome in zip(sendable, outcomes, strict=True):
                if isinstance(outcome, Delivered):
                    published.append(row.id)
                else:
                    failed += 1
                    stopped.add(row.customer_id)
        return failed

    async def _settle(self, session: AsyncSession, published: list[int], owner: str) -> None:
        await unconfirmed.note_published(session, published, utc_now())
        await repository.release(session, owner)

    async def close(self, grace: float = 5.0) -> None:
        """Stop after the pass in hand; cancel its publishes if it takes over `grace`."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=grace)
            if not self._task.done():
                self._task.cancel()
            await asyncio.wait({self._task})
        await self._db.drain()
