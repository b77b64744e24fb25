"""Deliver one customer's queue: claim it, send oldest first, record each answer.

No database transaction stays open during a CRM call: each step (claim and read the
queue; record the answer) is its own short transaction, so a slow CRM never holds a
lock that an API write needs.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.sync import repository
from customer_service.sync.models import FailedRequest
from customer_service.sync.outcome import Delivered, Outcome
from customer_service.sync.plan import Batch, Hold, plan_next
from customer_service.sync.retry import RetryPolicy, Urgency, judge_failure, parse_retry_after

log = logging.getLogger(__name__)


class Sender(Protocol):
    async def send(self, row: FailedRequest, crm_id: str | None) -> Outcome: ...


@dataclass
class PassCounts:
    """Requests (rows) attempted, and what became of them."""

    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    # Customers skipped because another replica (or a crashed one) holds their claim.
    busy: int = 0

    def add(self, other: "PassCounts") -> None:
        self.attempted += other.attempted
        self.delivered += other.delivered
        self.failed += other.failed
        self.dead += other.dead
        self.busy += other.busy

    def as_dict(self) -> dict[str, int]:
        return {
            "attempted": self.attempted,
            "delivered": self.delivered,
            "failed": self.failed,
            "dead": self.dead,
        }


@dataclass
class CrmHealth:
    """What this replica last saw of the CRM: a transient failure makes it `suspect`.

    A new process starts suspect, so its first probe (and the forced pass that follows a
    good answer) sends what an earlier process left behind without waiting for backoff.
    """

    suspect: bool = True
    on_recovery: list[Callable[[], None]] = field(default_factory=list)


class Deliverer:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        sender: Sender,
        settings: Settings,
        health: CrmHealth | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._sender = sender
        self._settings = settings
        self.health = health or CrmHealth()
        self._policy = RetryPolicy(
            settings.retry_backoff_base_seconds,
            settings.retry_backoff_max_seconds,
            settings.retry_max_attempts,
        )
        # This replica's name; each drain claims under `<owner>:<drain>`, so two drains of
        # one customer in the same process exclude each other as two replicas do.
        self.owner = f"{uuid.uuid4().hex[:12]}"

    async def deliver_customer(
        self, customer_id: int, urgency: Urgency = Urgency.DUE
    ) -> PassCounts:
        """Send `customer_id`'s due requests, oldest first, until one fails or none is due.

        With an urgency other than DUE the oldest request is taken whatever its backoff
        (dead ones stay dead). Returns without sending when another replica holds the
        customer's claim.
        """
        counts = PassCounts()
        while True:
            claimed = await self._drain(customer_id, urgency, counts)
            if not claimed:
                counts.busy += 1
                return counts
            if not await self._has_due(customer_id):
                return counts
            # A request committed while we were releasing the claim: take it too.
            urgency = Urgency.DUE

    async def _claim(self, customer_id: int, token: str) -> bool:
        async with self._sessionmaker() as session, session.begin():
            return await repository.claim(
                session, customer_id, token, utc_now(), self._settings.claim_lease_seconds
            )

    @contextlib.asynccontextmanager
    async def _heartbeat(self, customer_id: int, token: str) -> AsyncIterator[None]:
        """Keep renewing our claim while we work, so a slow CRM call never lets it lapse."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self._settings.claim_lease_seconds / 3)
                try:
                    await self._claim(customer_id, token)
                except Exception:
                    log.warning("could not renew the claim on customer %s", customer_id)

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _drain(self, customer_id: int, urgency: Urgency, counts: PassCounts) -> bool:
        token = f"{self.owner}:{uuid.uuid4().hex[:12]}"
        if not await self._claim(customer_id, token):
            return False
        try:
            async with self._heartbeat(customer_id, token):
                return await self._send_queue(customer_id, token, urgency, counts)
        finally:
            async with self._sessionmaker() as session, session.begin():
                await repository.release(session, customer_id, token)

    async def _send_queue(
        self, customer_id: int, token: str, urgency: Urgency, counts: PassCounts
    ) -> bool:
        """Send batches until the queue holds; False if the claim was lost meanwhile."""
        while True:
            async with self._sessionmaker() as session, session.begin():
                now = utc_now()
                # Renewing is also the check that the claim is still ours.
                if not await repository.claim(
                    session, customer_id, token, now, self._settings.claim_lease_seconds
                ):
                    return False
                rows = await repository.queue_of(session, customer_id)
                crm_id = await repository.current_crm_id(session, customer_id)
            plan = plan_next(rows, now, force=urgency is not Urgency.DUE)
            if isinstance(plan, Hold):
                return True
            if await self._attempt(plan, crm_id, urgency, counts):
                return True

    async def _attempt(
        self, batch: Batch, crm_id: str | None, urgency: Urgency, counts: PassCounts
    ) -> bool:
        """Send one batch and record its answer; True when it failed."""
        size = len(batch.settles)
        counts.attempted += size
        outcome = await self._sender.send(batch.send, crm_id or batch.send.crm_id)
        now = utc_now()
        if isinstance(outcome, Delivered):
            async with self._sessionmaker() as session, session.begin():
                await repository.settle(session, batch.settles, outcome.crm_id, batch.send.version)
            counts.delivered += size
            self._saw_crm_healthy()
            return False
        head = batch.settles[0]
        verdict = judge_failure(
            policy=self._policy,
            attempts=max(r.attempts for r in batch.settles),
            status=outcome.status,
            retry_after=parse_retry_after(outcome.retry_after, now),
            now=now,
            scheduled=head.next_attempt_at,
            urgency=urgency,
        )
        async with self._sessionmaker() as session, session.begin():
            await repository.record_failure(
                session,
                batch.settles,
                outcome.error,
                verdict.attempts,
                verdict.dead,
                verdict.next_attempt_at,
                now,
            )
        if verdict.dead:
            counts.dead += size
            log.warning(
                "request %s of customer %s is dead after %s attempts: %s",
                batch.send.id,
                batch.send.customer_id,
                verdict.attempts,
                outcome.error,
            )
        else:
            counts.failed += size
            self.health.suspect = True
            log.info(
                "request %s of customer %s failed (attempt %s): %s",
                batch.send.id,
                batch.send.customer_id,
                verdict.attempts,
                outcome.error,
            )
        return True

    def _saw_crm_healthy(self) -> None:
        if self.health.suspect:
            self.health.suspect = False
            for callback in self.health.on_recovery:
                callback()

    async def _has_due(self, customer_id: int) -> bool:
        async with self._sessionmaker() as session:
            rows = await repository.queue_of(session, customer_id, limit=1)
        return isinstance(plan_next(rows, utc_now(), force=False), Batch)
