"""Start delivery right after a commit, without holding the API response.

`kick` is called once the transaction that wrote outbox rows has committed. Each kicked
customer gets one background task at a time in this process; a kick that arrives while
its task runs makes the task go round once more, so no commit is left unattended. A
customer whose claim another delivery holds is looked at again shortly after (that
holder may have read its queue just before the commit).
While the CRM's breaker is open (`delivery.CrmHealth`) a kick is held, not run: the
customers are kicked when the CRM answers again (beside the probe's recovery pass; the
claims keep the two from sending one customer twice). Meanwhile their requests say why
they wait: the hold's reason is written on their `lastError` (once per customer and
reason, in the background, a few hundred customers a statement).
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from functools import partial

from customer_service.columns import utc_now
from customer_service.sync import repository
from customer_service.sync.delivery import Deliverer
from customer_service.sync.hold import HoldReason, held_error
from customer_service.sync.retry import Urgency

log = logging.getLogger(__name__)

# A kicked customer found held elsewhere is looked at again after this, doubling up to
# the claim's lease.
BUSY_FIRST_LOOK_SECONDS = 0.05
# Sends in flight for kicked customers: CRM calls over HTTP (each a request the CRM
# works on), or Kafka publishes. A publish waits for the broker's acknowledgement of the
# produce request that carries it, and the producer packs every publish waiting meanwhile
# into the next one, so a slot is cheap; with 64, a steady 389 writes/s on PostgreSQL
# outran what 64 publishes per acknowledgement could carry (the outbox grew to 2,000 in
# 15 s, lag p50 1.4-2.8 s).
CRM_CALLS_IN_FLIGHT = 64
KAFKA_PUBLISHES_IN_FLIGHT = 512


class Dispatcher:
    def __init__(
        self, deliverer: Deliverer, concurrency: int = CRM_CALLS_IN_FLIGHT, enabled: bool = True
    ) -> None:
        self._deliverer = deliverer
        self._enabled = enabled
        # CRM calls in flight for kicked customers. Held around the call only, as a retry
        # pass holds RETRY_CONCURRENCY's: held around the whole delivery (claim, read,
        # call, record), 64 slots capped a steady load at 64 deliveries per delivery
        # time, about 450/s on PostgreSQL on 2 cores, and the lag grew without bound.
        self._slots = asyncio.Semaphore(concurrency)
        # Deliveries under way at once, CRM call or not: four per slot keeps the next
        # calls claimed and read, and bounds a group's statements (a recovery kicking
        # thousands of held customers claims them a few hundred at a time).
        self._deliveries = asyncio.Semaphore(4 * concurrency)
        self._running: dict[int, asyncio.Task[None]] = {}
        self._again: set[int] = set()
        # Customers whose kick came while the breaker was open: kicked when it closes.
        self._held: set[int] = set()
        # Held customers whose requests do not say the current reason yet, and the task
        # that writes it on them.
        self._unnoted: set[int] = set()
        self._noting: asyncio.Task[None] | None = None
        # Held customers released by the CRM's recovery, not looked at yet.
        self._recovering: set[int] = set()
        self._closing = asyncio.Event()
        deliverer.health.on_recovery.append(self._release_held)
        deliverer.health.on_hold.append(self._hold_changed)

    def kick(self, customer_ids: Iterable[int]) -> None:
        """Deliver these customers' requests soon (called after the commit)."""
        if self._closing.is_set() or not self._enabled:
            return
        if self._deliverer.health.breaker_open:
            # The CRM is failing: the requests wait in the outbox until it answers again,
            # instead of each write calling it once more.
            self._hold(customer_ids)
            return
        for customer_id in customer_ids:
            if customer_id in self._running:
                self._again.add(customer_id)
                continue
            task = asyncio.create_task(self._run(customer_id), name=f"deliver-{customer_id}")
            self._running[customer_id] = task

    def _hold(self, customer_ids: Iterable[int]) -> None:
        ids = set(customer_ids)
        self._held |= ids
        self._unnoted |= ids
        self._note_soon()

    def _hold_changed(self, hold: HoldReason) -> None:
        self._unnoted |= self._held
        self._note_soon()

    def _note_soon(self) -> None:
        if self._unnoted and (self._noting is None or self._noting.done()):
            self._noting = asyncio.create_task(self._note_held(), name="note-held")

    async def _note_held(self) -> None:
        """Write the hold's reason on the held customers' untried requests."""
        while self._unnoted and not self._closing.is_set():
            hold = self._deliverer.health.held_by
            if hold is None:
                return  # not known yet (a new process before its first probe): `on_hold`
            ids, self._unnoted = sorted(self._unnoted), set()
            error = held_error(hold)
            try:
                await self._deliverer.db.run(
                    partial(repository.note_held, customer_ids=ids, error=error, now=utc_now())
                )
            except Exception:
                log.warning("could not note why %s customers are held", len(ids), exc_info=True)

    def _release_held(self) -> None:
        held, self._held = sorted(self._held), set()
        self._unnoted.clear()
        # Their first look takes the oldest request whatever its backoff, as the recovery
        # pass beside it does: one that failed while the CRM was down is not due yet, and a
        # look that took the claim and sent nothing made the recovery pass skip the
        # customer as busy (it waited a lease for the follow-up).
        self._recovering.update(held)
        self.kick(held)

    async def _run(self, customer_id: int) -> None:
        try:
            delay = BUSY_FIRST_LOOK_SECONDS
            while True:
                async with self._deliveries:
                    busy = await self._deliver(customer_id)
                if not busy or self._closing.is_set():
                    break
                # Another delivery holds the customer (another replica's, or a retry pass
                # here). It may have read the queue just before our commit and give its
                # claim back without our request: look again, soon, then less often, until
                # the claim is ours (a crashed holder's lease runs out).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
                delay = min(2 * delay, self._deliverer.lease_seconds)
                if self._closing.is_set():
                    break
                if self._deliverer.health.breaker_open:
                    self._hold([customer_id])  # as a kick would be: sent on recovery
                    break
        finally:
            self._running.pop(customer_id, None)

    async def _deliver(self, customer_id: int) -> bool:
        """Deliver, again while kicks keep coming; whether the last look found the customer
        held elsewhere."""
        while True:
            self._again.discard(customer_id)
            busy = False
            urgency = Urgency.RECOVERY if customer_id in self._recovering else Urgency.DUE
            self._recovering.discard(customer_id)
            try:
                counts = await self._deliverer.deliver_customer(
                    customer_id, urgency, sending=self._slots
                )
                busy = bool(counts.busy)
            except Exception:
                # The row is safe in the outbox; the retry job will take it.
                log.exception("delivery of customer %s failed", customer_id)
            if customer_id not in self._again or self._closing.is_set():
                return busy

    async def close(self, grace: float = 5.0) -> None:
        """Stop taking kicks; give deliveries in flight `grace` seconds, then cancel them.

        A cancelled delivery loses nothing: its row stays in the outbox, and a CRM call that
        did land is recognised by its Idempotency-Key when the row is sent again. The
        cancellation never lands inside a transaction: the delivery's database work is
        shielded (`dbwork`), so it still commits or rolls back and returns its connection.
        """
        self._closing.set()
        tasks = list(self._running.values())
        if self._noting is not None:
            tasks.append(self._noting)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self._running)
