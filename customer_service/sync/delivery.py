"""Deliver one customer's queue: claim it, send oldest first, record each answer.

No database transaction stays open during a CRM call, so a slow CRM never holds a lock
that an API write needs. A delivery of one request needs two short pieces of database
work besides the call: before it, claim the customer and read its queue; after it, record
the answer, read the queue again, and either renew the claim (more to send) or give it
back (nothing left). Both are group-committed with every other delivery's (`grouping`):
one transaction serves all the deliveries that asked meanwhile. A failure is recorded,
and its claim given back, in a transaction of its own. A claim is renewed in the
background only for a delivery still running after a third of its lease.

Every transaction goes through `dbwork.BackgroundDatabase`: a delivery that is cancelled
(shutdown, a grace period running out) stops between transactions, never inside one,
and the sync engine never holds more than its share of the connection pool.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.sync import repository
from customer_service.sync.dbwork import BackgroundDatabase
from customer_service.sync.grouping import RELEASED, GroupCommit, Released, View
from customer_service.sync.hold import HoldReason, hold_kind
from customer_service.sync.models import FailedRequest
from customer_service.sync.outcome import Delivered, Failed, Outcome
from customer_service.sync.plan import Batch, Hold, plan_next
from customer_service.sync.retry import (
    RetryPolicy,
    Urgency,
    judge_failure,
    parse_retry_after,
)

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
    """What this replica last saw of the CRM, and its circuit breaker (guarantee 7).

    A failure that speaks for the whole CRM (`hold.hold_kind`: no answer, a certificate
    refused, 401, 403, 429, 502, 503, 504) makes it `suspect` and names the `hold`. While
    it is suspect and a probe runs (`probing`: the process's retry job asks the CRM, one
    call at a time, whether it is back), the breaker is open: writes no longer kick a
    delivery of their own; their requests wait in the outbox for the pass the probe
    starts when the CRM answers again. Without a probe (an API-only process, tests driving
    passes themselves) it never opens.

    A new process starts suspect, so its first probe (and the forced pass that follows a
    good answer) sends what an earlier process left behind without waiting for backoff.
    Each change of the hold's kind is logged once, and told to `on_hold` (the dispatcher
    notes it on the requests it holds); the detail shown is the latest one's.
    """

    suspect: bool = True
    probing: bool = False
    hold: HoldReason | None = None
    on_recovery: list[Callable[[], None]] = field(default_factory=list)
    on_hold: list[Callable[[HoldReason], None]] = field(default_factory=list)

    @property
    def breaker_open(self) -> bool:
        return self.probing and self.suspect

    @property
    def held_by(self) -> HoldReason | None:
        """Why deliveries are held now (None: they are not, or the cause is not known yet)."""
        return self.hold if self.suspect else None

    def mark_failing(self, hold: HoldReason) -> None:
        """A call failed for the CRM as a whole: suspect it, and say why once per change."""
        self.suspect = True
        # A change of kind is news; another wording of the same kind (a refused connection,
        # then a timeout) only refreshes the detail shown, without a log line or notes.
        news = self.hold is None or hold.kind != self.hold.kind
        self.hold = hold
        if not news:
            return
        log.warning("CRM deliveries held (%s): %s", hold.kind, hold.detail)
        for callback in self.on_hold:
            callback(hold)

    def mark_healthy(self) -> None:
        """The CRM answered well: close the breaker and, if it was open, tell the listeners
        (the retry job's recovery pass, the dispatcher's held kicks)."""
        if self.hold is not None:
            log.warning("CRM deliveries resume: the CRM answers again")
            self.hold = None
        if self.suspect:
            self.suspect = False
            for callback in self.on_recovery:
                callback()


class Deliverer:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        sender: Sender,
        settings: Settings,
        health: CrmHealth | None = None,
    ) -> None:
        self.db = BackgroundDatabase(sessionmaker, settings.sync_database_connections)
        self._group = GroupCommit(self.db, settings.claim_lease_seconds)
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

    @property
    def lease_seconds(self) -> float:
        return self._settings.claim_lease_seconds

    async def deliver_customer(
        self,
        customer_id: int,
        urgency: Urgency = Urgency.DUE,
        sending: asyncio.Semaphore | None = None,
    ) -> PassCounts:
        """Send `customer_id`'s due requests, oldest first, until one fails or none is due.

        With an urgency other than DUE the oldest request is taken whatever its backoff
        (dead ones stay dead). Returns without sending when another replica holds the
        customer's claim. `sending` bounds the CRM calls in flight (a retry pass's
        RETRY_CONCURRENCY): a slot is held for each call only, not for the bookkeeping
        around it.
        """
        counts = PassCounts()
        while True:
            token = f"{self.owner}:{uuid.uuid4().hex[:12]}"
            view = await self._group.look(customer_id, token)
            if view is None:
                counts.busy += 1
                return counts
            released = False
            try:
                async with self._heartbeat(customer_id, token):
                    released = await self._send_queue(
                        customer_id, token, view, urgency, counts, sending
                    )
            finally:
                if not released:
                    head = await self.db.run(
                        partial(self._release, customer_id=customer_id, token=token)
                    )
            if released:
                # Given back in the transaction that recorded the last answer, after a look
                # at the queue: a failure (its backoff decides when to try again), or
                # nothing left to send. A request committed later is kicked on its own.
                return counts
            if not isinstance(plan_next(head, utc_now(), force=False), Batch):
                return counts
            # A request committed while we were releasing the claim: take it too.
            urgency = Urgency.DUE

    @staticmethod
    async def _release(session: AsyncSession, customer_id: int, token: str) -> list[FailedRequest]:
        """Give the claim back; the head of the queue tells whether work arrived meanwhile."""
        await repository.release(session, customer_id, token)
        return await repository.queue_of(session, customer_id, limit=1)

    @contextlib.asynccontextmanager
    async def _heartbeat(self, customer_id: int, token: str) -> AsyncIterator[None]:
        """Keep renewing our claim while we work, so a slow CRM call never lets it lapse."""
        lease = self._settings.claim_lease_seconds

        async def renew() -> None:
            while True:
                try:
                    ours = await self.db.run(
                        lambda s: repository.renew(s, customer_id, token, utc_now(), lease)
                    )
                except Exception:
                    log.warning("could not renew the claim on customer %s", customer_id)
                else:
                    if not ours:
                        log.warning("the claim on customer %s lapsed mid-delivery", customer_id)
                await asyncio.sleep(lease / 3)

        # Most deliveries end long before a third of the lease: the renewing task is only
        # made for one that is still running then.
        task: asyncio.Task[None] | None = None

        def start() -> None:
            nonlocal task
            task = asyncio.create_task(renew(), name=f"lease-{customer_id}")

        handle = asyncio.get_running_loop().call_later(lease / 3, start)
        try:
            yield
        finally:
            handle.cancel()
            if task is not None:
                # Safe at any instant: a renewal in flight is shielded and still finishes,
                # and one landing after the claim was given back changes nothing.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _send_queue(
        self,
        customer_id: int,
        token: str,
        view: View,
        urgency: Urgency,
        counts: PassCounts,
        sending: asyncio.Semaphore | None,
    ) -> bool:
        """Send batches, oldest first, until the queue holds, one fails or the claim is lost.

        True when the claim was given back already, in the transaction that recorded the
        last answer (the common case: one transaction fewer per delivery)."""
        force = urgency is not Urgency.DUE
        current: View | Released | None = view
        while isinstance(current, View):
            batch = plan_next(current.rows, current.now, force=force)
            if isinstance(batch, Hold):
                return False
            size = len(batch.settles)
            counts.attempted += size
            known = current.crm_id or batch.send.crm_id
            async with sending or contextlib.nullcontext():
                outcome = await self._sender.send(batch.send, known)
            if not isinstance(outcome, Delivered):
                await self._record_failure(batch, outcome, urgency, counts, customer_id, token)
                return True
            learnt = outcome.crm_id != known
            current = await self._group.settle(batch, outcome.crm_id, learnt, token, force)
            counts.delivered += size
            self.health.mark_healthy()
        return current is RELEASED

    async def _record_failure(
        self,
        batch: Batch,
        outcome: Failed,
        urgency: Urgency,
        counts: PassCounts,
        customer_id: int,
        token: str,
    ) -> None:
        """Record the failed attempt and give the claim back, in one transaction."""
        size = len(batch.settles)
        now = utc_now()
        verdict = judge_failure(
            policy=self._policy,
            attempts=max(r.attempts for r in batch.settles),
            status=outcome.status,
            retry_after=parse_retry_after(outcome.retry_after, now),
            now=now,
            scheduled=batch.settles[0].next_attempt_at,
            urgency=urgency,
        )

        async def record(session: AsyncSession) -> None:
            await repository.record_failure(
                session,
                batch.settles,
                outcome.error,
                verdict.attempts,
                verdict.dead,
                verdict.next_attempt_at,
                now,
            )
            await repository.release(session, customer_id, token)

        await self.db.run(record)
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
            kind = hold_kind(outcome.status, outcome.unanswered)
            if kind is not None:
                self.health.mark_failing(HoldReason(kind, outcome.error))
            log.info(
                "request %s of customer %s failed (attempt %s): %s",
                batch.send.id,
                batch.send.customer_id,
                verdict.attempts,
                outcome.error,
            )
