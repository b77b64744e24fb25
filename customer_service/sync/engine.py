"""The delivery engine: batches of customers, each one claim, one connector call, one settle.

The unit of work is a batch. A batch takes up to N customers and, with no transaction
open during the CRM call (a slow CRM never holds a lock an API write needs):

1. claims them under the batch's owner (one statement, customers another delivery holds
   are left out: "busy"), reads their queues (one statement), plans each customer's
   next send (`plan.plan_next`: the oldest request, a run of updates coalesced), and
   gives back the claims of those with nothing to send now (on PostgreSQL each
   statement commits on its own: `transaction(autocommit=True)`);
2. hands the changes to the connector: in calls of its `batch_size` (a CRM with a batch
   API gets one call per batch; one without gets its calls concurrently);
3. in one transaction: settles every outcome (`repository.settle`: delivered rows
   removed, failures recorded with their backoff, or dead) and gives the claims back (on
   PostgreSQL, deliveries or publishes alone: one statement committing on its own,
   `repository.settle_and_release`).

A customer with more to send after a delivery goes into a next batch; one that failed
waits for its backoff (the retry job, `sync.scheduler`). Every path uses this: a write's
kick (live deliveries), the retry job's passes, the recovery pass, `customer-service retry`.

Live deliveries: `kick` (called after the commit that wrote outbox rows) marks customers
wanted and starts a batch task, unless one is waiting to claim already. One batch claims
at a time, taking everything kicked meanwhile (so the batches grow with the load); while
it sends and settles, the next one claims. At most `GATHER_BATCHES` live batches start
within `STEADY_GATHER_SECONDS` (within `GATHER_SECONDS` when the service is short of its
loop: the API in `BUSY_API_TRANSACTIONS` transactions at once, or the process at
`BUSY_CPU_SHARE` of its core, `cpu_share`), so the kicks in between gather into fewer,
larger batches and each claim and settle serves more customers; a kick after a quiet
moment starts its batch at once. (32 writers on PostgreSQL, three alternating rounds:
594-678 writes a second with sync on against 494-575 without the busy window. A steady
510 writes a second on SQLite, where the API is never seen busy, started a batch for every
3.4 customers and kept the service at 0.96 of its core, the sync lag queueing behind it:
p99 216-311 ms; with the steady window 0.82-0.87 of the core, p99 43-66 ms, two
alternating pairs.) Customers in live batches are bounded by four
per CRM call in flight, the calls by the connector's `calls_in_flight`. A customer
in a batch of this process waits for it (its kick is taken after), so a customer is in
one batch at a time here, and the claims keep replicas apart. A customer found busy is
looked at again shortly after, then less often (the holder may have read its queue just
before our commit). While the CRM's breaker is open (`health.CrmHealth`) kicks are held:
the customers are kicked when the CRM answers again, and meanwhile their requests say why
they wait (`hold.held_error` on their `lastError`).

Shutdown (`close`): no new batch starts; batches in flight get a grace period, then their
CRM calls are cut short (a cancel scope around the call only: never inside a transaction)
and the claims given back. A call cut short loses nothing: the rows stay, and a call that
did land is recognised by its Idempotency-Key (or its externalId) when sent again.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.db import runs_on_loop_thread
from customer_service.sync import repository
from customer_service.sync.connector import Change, Connector
from customer_service.sync.health import CrmHealth
from customer_service.sync.hold import HoldReason, held_error, hold_kind
from customer_service.sync.models import OutboxRow
from customer_service.sync.outcome import Delivered, Outcome
from customer_service.sync.plan import Batch, plan_next
from customer_service.sync.retry import (
    RetryPolicy,
    Urgency,
    judge_failure,
    parse_retry_after,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Customers in live batches at once (claimed, sending or settling): four per CRM call in
# flight keeps the next calls claimed and read while calls are out.
LIVE_CUSTOMERS_PER_CALL = 4
# A kicked customer found held elsewhere is looked at again after this, doubling up to
# the claim's lease.
BUSY_FIRST_LOOK_SECONDS = 0.05
# Batches of a retry pass in flight: while some send (their calls within the pass's
# bound), the next is claimed and read and the last settled, so the CRM is never kept
# waiting on our bookkeeping.
PASS_BATCHES = 4
# Customers in one batch at most (the claim statement's size).
MAX_BATCH_CUSTOMERS = 500
# At most GATHER_BATCHES live batches start within STEADY_GATHER_SECONDS, or within
# GATHER_SECONDS under a saturating load (the API in at least BUSY_API_TRANSACTIONS
# transactions at once): the kicks in between gather into fewer, larger batches (one claim
# and one settle for more customers). The steady window is what a kick waits at most
# below that load, short beside the sync lag.
BUSY_API_TRANSACTIONS = 12
# ... or with the process at this share of its core over the last quarter second
# (`cpu_share`): short of CPU before requests queue.
BUSY_CPU_SHARE = 0.8
GATHER_BATCHES = 2
GATHER_SECONDS = 0.05
STEADY_GATHER_SECONDS = 0.02
DEADLOCK_DETECTED = "40P01"  # PostgreSQL's SQLSTATE
DEADLOCK_ATTEMPTS = 3


@dataclass
class PassCounts:
    """Requests (rows) attempted, and what became of them."""

    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    # Customers skipped because another delivery (or a crashed replica) holds their claim.
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
class BatchResult:
    counts: PassCounts = field(default_factory=PassCounts)
    # Customers with more to send now (delivered, and more queued behind): their claims
    # are kept, under `owner`, for the batch that continues them (`drain`).
    more: list[int] = field(default_factory=list)
    # Customers whose claim another delivery holds.
    busy: list[int] = field(default_factory=list)
    owner: str = ""


@dataclass(frozen=True)
class _Plan:
    """A claimed customer's next send (None: nothing to send now), the CRM id its
    customer row holds, and whether requests wait behind the send."""

    batch: Batch | None
    crm_id: str | None
    more: bool


@dataclass(frozen=True)
class _Opened:
    """A batch claimed and planned: its owner, and each claimed customer's plan."""

    owner: str
    plans: dict[int, _Plan]


class _CutShort(Exception):
    """The batch's CRM calls were cut short by `close`."""


class _GroupCutShort(Exception):
    """The settle group a batch was in was cancelled with its leader: nothing recorded."""


OutcomeObserver = Callable[[OutboxRow, Outcome], None]


class DeliveryEngine:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        connector: Connector,
        settings: Settings,
        health: CrmHealth | None = None,
        *,
        enabled: bool = True,
        on_outcome: OutcomeObserver | None = None,
        api_load: Callable[[], int] | None = None,
        cpu_share: Callable[[], float] | None = None,
    ) -> None:
        self.connector = connector
        self.health = health or CrmHealth()
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._enabled = enabled
        self._on_outcome = on_outcome
        self._policy = RetryPolicy(
            settings.retry_backoff_base_seconds,
            settings.retry_backoff_max_seconds,
            settings.retry_max_attempts,
        )
        # Transactions of the engine at once: its share of the connection pool.
        self._db_slots = asyncio.Semaphore(settings.sync_database_connections)
        self._on_loop_thread = runs_on_loop_thread(self.database.url)
        # Calls in flight for live deliveries (a pass brings its own bound).
        self._live_calls = asyncio.Semaphore(connector.calls_in_flight)
        # This replica's name; each batch claims under `<owner>:<batch>`, so two batches
        # in one process exclude each other as two replicas do.
        self.owner = uuid.uuid4().hex[:12]
        self._wanted: dict[int, Urgency] = {}
        self._in_batch: set[int] = set()
        self._live: set[asyncio.Task[None]] = set()
        # One live batch claims at a time; a task waiting to claim takes every kick that
        # arrives meanwhile, so kicks start no other task.
        self._claiming = asyncio.Lock()
        # Finished batches waiting for the settling group, and whether one is leading it.
        self._settle_queue: list[_SettleWork] = []
        self._settling = False
        self._live_customers = LIVE_CUSTOMERS_PER_CALL * connector.calls_in_flight
        self._claimer_waiting = False
        self._busy_delays: dict[int, float] = {}
        self._busy_timers: dict[int, asyncio.TimerHandle] = {}
        # Customers whose kick came while the breaker was open; those whose requests do
        # not say the current reason yet, and the task that writes it on them.
        self._held: set[int] = set()
        self._unnoted: set[int] = set()
        self._noting: asyncio.Task[None] | None = None
        # The cancel scopes of the CRM calls in flight: cut short at shutdown.
        self._calls: set[asyncio.Timeout] = set()
        self._batches = 0  # batches in flight, of every kind
        self._closing = False
        # The API's transactions under way (`deps.ApiLoad`), and when the live batches of
        # the last GATHER_SECONDS started; the timer that starts the next once they age.
        self._api_load = api_load
        # The share of a core the process used lately (`cpu_share.CpuShare`).
        self._cpu_share = cpu_share
        self._young: list[float] = []
        self._gather_timer: asyncio.TimerHandle | None = None
        self.health.on_recovery.append(self._release_held)
        self.health.on_hold.append(self._hold_changed)

    @property
    def lease_seconds(self) -> float:
        return self._settings.claim_lease_seconds

    @property
    def in_flight(self) -> int:
        """Customers wanted, being delivered, or waiting to be looked at again, by live
        deliveries."""
        return len(self._wanted.keys() | self._in_batch | self._busy_timers.keys())

    @property
    def database(self) -> AsyncEngine:
        """The engine whose pool the delivery transactions draw on."""
        bound: AsyncEngine = self._sessionmaker.kw["bind"]
        return bound

    # -- live deliveries ---------------------------------------------------------------

    def kick(self, customer_ids: Iterable[int], urgency: Urgency = Urgency.DUE) -> None:
        """Deliver these customers' requests soon (called after the commit)."""
        if self._closing or not self._enabled:
            return
        if self.health.breaker_open:
            # The CRM is failing: the requests wait in the outbox until it answers again,
            # instead of each write calling it once more.
            self._hold(customer_ids)
            return
        for customer_id in customer_ids:
            if self._wanted.get(customer_id) is not Urgency.RECOVERY:
                self._wanted[customer_id] = urgency
        self._start_batches()

    def _start_batches(self) -> None:
        """Have a batch task claim what is wanted, unless one is already waiting to."""
        if self._closing or self._claimer_waiting or not self._takeable() or self._gathering():
            return
        self._claimer_waiting = True
        task = asyncio.create_task(self._live_batch(), name="deliver-batch")
        self._live.add(task)
        task.add_done_callback(self._live.discard)

    def _gathering(self) -> bool:
        """Whether the kicks wait for the next batch (`GATHER_BATCHES` started within the
        window the API's load sets; a timer starts it when the older of them ages out);
        else the batch about to start is noted."""
        if self._gather_timer is not None:
            return True
        loop = asyncio.get_running_loop()
        now = loop.time()
        busy = self._busy()
        window = GATHER_SECONDS if busy else STEADY_GATHER_SECONDS
        self._young = [t for t in self._young if now - t < GATHER_SECONDS]
        recent = [t for t in self._young if now - t < window]
        if len(recent) >= GATHER_BATCHES:
            wait = window - (now - recent[-GATHER_BATCHES])
            self._gather_timer = loop.call_later(wait, self._gathered)
            return True
        self._young.append(now)
        return False

    def _busy(self) -> bool:
        """Whether the service is short of its event loop: the API in many transactions at
        once, or the process near its core."""
        if self._api_load is not None and self._api_load() >= BUSY_API_TRANSACTIONS:
            return True
        return self._cpu_share is not None and self._cpu_share() >= BUSY_CPU_SHARE

    def _gathered(self) -> None:
        self._gather_timer = None
        self._start_batches()

    def _takeable(self) -> bool:
        room = len(self._in_batch) < self._live_customers
        return room and any(cid not in self._in_batch for cid in self._wanted)

    def _take(self) -> dict[int, Urgency]:
        """Up to a batch of the customers wanted and not in a batch already, oldest kick
        first, within the live deliveries' bound."""
        size = min(self._live_batch_customers(), max(0, self._live_customers - len(self._in_batch)))
        taken: dict[int, Urgency] = {}
        for customer_id in list(self._wanted):
            if len(taken) >= size:
                break
            if customer_id not in self._in_batch:
                taken[customer_id] = self._wanted.pop(customer_id)
        self._in_batch.update(taken)
        return taken

    def _live_batch_customers(self) -> int:
        connector = self.connector
        return min(MAX_BATCH_CUSTOMERS, max(connector.batch_size, connector.calls_in_flight))

    async def _live_batch(self) -> None:
        """One live batch: claim what is wanted (one batch claims at a time, taking all
        that was kicked meanwhile), then, while the next batch claims, send and settle,
        and continue the customers with more to send."""
        wanted: dict[int, Urgency] = {}
        result = BatchResult()
        try:
            async with self._claiming:
                self._claimer_waiting = False
                wanted = self._take()
                if not wanted:
                    return
                opened = await self.open_batch(wanted)
            self._start_batches()
            result = await self.finish_batch(opened, wanted, self._live_calls)
            if result.more:
                more = await self.drain(
                    {cid: wanted[cid] for cid in result.more},
                    self._live_calls,
                    lambda: self._closing,
                    owner=result.owner,
                )
                result.counts.add(more.counts)
        except Exception:
            # The rows are safe in the outbox; the retry job will take them.
            log.exception("delivery of customers %s failed", sorted(wanted)[:10])
        finally:
            self._in_batch.difference_update(wanted)
        for customer_id in result.busy:
            self._look_again(customer_id)
        for customer_id in set(wanted) - set(result.busy):
            self._busy_delays.pop(customer_id, None)
        self._start_batches()

    def _look_again(self, customer_id: int) -> None:
        """Another delivery holds the customer (another replica's, or a retry pass here).
        It may have read the queue just before our commit and give its claim back without
        our request: look again, soon, then less often, until the claim is ours (a crashed
        holder's lease runs out)."""
        if self._closing or customer_id in self._busy_timers:
            return
        delay = self._busy_delays.get(customer_id, BUSY_FIRST_LOOK_SECONDS)
        self._busy_delays[customer_id] = min(2 * delay, self.lease_seconds)

        def again() -> None:
            self._busy_timers.pop(customer_id, None)
            self.kick([customer_id])

        self._busy_timers[customer_id] = asyncio.get_running_loop().call_later(delay, again)

    # -- holds -------------------------------------------------------------------------

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
        while self._unnoted and not self._closing:
            hold = self.health.held_by
            if hold is None:
                return  # not known yet (a new process before its first probe): `on_hold`
            ids, self._unnoted = sorted(self._unnoted), set()
            work = partial(
                repository.note_held, customer_ids=ids, error=held_error(hold), now=utc_now()
            )
            try:
                await self.transaction(work)
            except Exception:
                log.warning("could not note why %s customers are held", len(ids), exc_info=True)

    def _release_held(self) -> None:
        held, self._held = sorted(self._held), set()
        self._unnoted.clear()
        # Their first look takes the oldest request whatever its backoff, as the recovery
        # pass beside it does: one that failed while the CRM was down is not due yet.
        self.kick(held, Urgency.RECOVERY)

    # -- passes --------------------------------------------------------------------------

    async def run_pass(
        self,
        customer_ids: Sequence[int],
        urgency: Urgency,
        calls: asyncio.Semaphore,
        width: int,
        stopped: Callable[[], bool],
    ) -> tuple[PassCounts, int]:
        """Deliver these customers (a retry pass), in batches, `PASS_BATCHES` in flight so
        the next one is claimed and read while others send: each customer until its queue holds or
        fails. `calls` bounds the CRM calls in flight, `width` of them (the pass's
        RETRY_CONCURRENCY). Once `stopped()` the pass takes no further batch. Returns the
        counts and how many customers it took."""
        pending = list(reversed(customer_ids))  # popped from the end: oldest first
        totals = PassCounts()
        taken = 0
        size = min(MAX_BATCH_CUSTOMERS, self.connector.batch_size * width)

        async def worker() -> None:
            nonlocal taken
            while not stopped() and not self._closing and pending:
                batch = [pending.pop() for _ in range(min(size, len(pending)))]
                taken += len(batch)
                try:
                    result = await self.drain(dict.fromkeys(batch, urgency), calls, stopped)
                except Exception:
                    log.exception("retry of customers %s failed", batch[:10])
                    continue
                totals.add(result.counts)
                totals.busy += len(result.busy)

        await asyncio.gather(*(worker() for _ in range(PASS_BATCHES)))
        return totals, taken

    async def drain(
        self,
        wanted: dict[int, Urgency],
        calls: asyncio.Semaphore | None,
        stopped: Callable[[], bool],
        owner: str | None = None,
    ) -> BatchResult:
        """Deliver these customers, each until its queue holds (nothing due, a failure, or
        nothing left): batch after batch, those with more to send keeping their claims
        from one batch to the next, so no other delivery takes a customer half-way. Once
        `stopped()`, the claims kept are given back and the rest left to later. `owner`:
        these customers' claims, kept by an earlier batch."""
        total = await self.deliver(wanted, calls, owner)
        result = total
        try:
            while result.more and not stopped():
                result = await self.deliver(
                    {cid: wanted[cid] for cid in result.more}, calls, owner=result.owner
                )
                total.counts.add(result.counts)
        finally:
            if result.more:  # stopped, or a batch failed: give the kept claims back
                with contextlib.suppress(Exception):
                    await self.transaction(partial(repository.release, owner=result.owner))
        total.more = []
        return total

    # -- one batch -----------------------------------------------------------------------

    async def deliver(
        self,
        wanted: dict[int, Urgency],
        calls: asyncio.Semaphore | None = None,
        owner: str | None = None,
    ) -> BatchResult:
        """One batch: claim, read and plan; send; settle (see the module's docstring).
        With an urgency other than DUE a customer's oldest request is taken whatever its
        backoff (dead ones stay dead). Customers with more to send keep their claims
        (`BatchResult.more`): the caller continues them under `owner` or gives them back.
        `owner`: the claims of an earlier batch, kept."""
        opened = await self.open_batch(wanted, owner)
        return await self.finish_batch(opened, wanted, calls)

    async def open_batch(self, wanted: dict[int, Urgency], owner: str | None = None) -> "_Opened":
        """A batch's first transaction: claim, read the queues, plan."""
        owner = owner or f"{self.owner}:{uuid.uuid4().hex[:12]}"
        now = utc_now()
        claim = partial(self._claim_and_plan, wanted=wanted, owner=owner, now=now)
        try:
            plans = await self.transaction(claim, autocommit=True)
        except BaseException:
            # In autocommit mode the claims may have committed before the failure: given
            # back (best effort; else they lapse with their lease).
            with contextlib.suppress(Exception):
                await self.transaction(partial(repository.release, owner=owner))
            raise
        return _Opened(owner, plans)

    async def finish_batch(
        self, opened: "_Opened", wanted: dict[int, Urgency], calls: asyncio.Semaphore | None
    ) -> BatchResult:
        """A batch's call and its settling transaction."""
        owner, plans = opened.owner, opened.plans
        result = BatchResult(owner=owner)
        result.busy = [customer_id for customer_id in wanted if customer_id not in plans]
        sendable = {cid: plan for cid, plan in plans.items() if plan.batch is not None}
        if not sendable:
            return result
        changes = []
        for _, plan in sorted(sendable.items()):
            assert plan.batch is not None
            changes.append(Change(plan.batch.send, plan.crm_id or plan.batch.send.crm_id))
        try:
            async with self._renewing(owner):
                outcomes = await self._send(changes, calls)
        except BaseException as error:
            # Cut short (shutdown) or failed unexpectedly: nothing recorded, the rows
            # stay; the claims are given back so another delivery can take them at once.
            with contextlib.suppress(Exception):
                await self.transaction(partial(repository.release, owner=owner))
            if isinstance(error, _CutShort):
                return result
            raise
        settle = self._judge(sendable, changes, outcomes, wanted, result)
        done = set(sendable) - set(result.more)
        await self._settle_grouped(_SettleWork(settle, owner, done))
        self._after(changes, outcomes)
        return result

    async def _claim_and_plan(
        self, connection: AsyncConnection, wanted: dict[int, Urgency], owner: str, now: datetime
    ) -> dict[int, _Plan]:
        """Claim, read the queues, plan; give back the claims with nothing to send now.
        Every customer claimed has an entry (its batch None when it waits)."""
        claimed, queues = await repository.claim_and_read(
            connection, wanted, owner, now, self.lease_seconds
        )
        if not claimed:
            return {}
        plans: dict[int, _Plan] = {}
        for customer_id in claimed:
            rows, crm_id = queues.get(customer_id, ([], None))
            force = wanted[customer_id] is not Urgency.DUE
            planned = plan_next(rows, now, force=force)
            batch = planned if isinstance(planned, Batch) else None
            more = batch is not None and len(rows) > len(batch.settles)
            plans[customer_id] = _Plan(batch, crm_id, more)
        idle = [cid for cid, plan in plans.items() if plan.batch is None]
        if idle:
            await repository.release(connection, owner, idle)
        return plans

    async def _send(self, changes: list[Change], calls: asyncio.Semaphore | None) -> list[Outcome]:
        """The changes in calls of the connector's batch size, concurrently, each call
        holding a slot of `calls`; inside a cancel scope that `close` may cut short."""
        size = max(1, self.connector.batch_size)
        chunks = [changes[i : i + size] for i in range(0, len(changes), size)]

        async def call(chunk: list[Change]) -> list[Outcome]:
            async with calls or contextlib.nullcontext():
                return await self.connector.send(chunk)

        scope = asyncio.timeout(None)
        self._calls.add(scope)
        try:
            async with scope:
                if len(chunks) == 1:
                    answered = [await call(chunks[0])]
                else:
                    answered = await asyncio.gather(*(call(chunk) for chunk in chunks))
        except TimeoutError:
            if scope.expired():
                raise _CutShort() from None
            raise
        finally:
            self._calls.discard(scope)
        return [outcome for chunk in answered for outcome in chunk]

    def _judge(
        self,
        sendable: dict[int, _Plan],
        changes: list[Change],
        outcomes: list[Outcome],
        wanted: dict[int, Urgency],
        result: BatchResult,
    ) -> repository.Outcomes:
        """What each outcome makes of its rows (pure but for the clock)."""
        now = utc_now()
        settle = repository.Outcomes(now=now, confirmed=not self.connector.confirms_later)
        counts = result.counts
        for change, outcome in zip(changes, outcomes, strict=True):
            customer_id = change.customer_id
            plan = sendable[customer_id]
            batch = plan.batch
            assert batch is not None
            rows = [row.id for row in batch.settles]
            counts.attempted += len(rows)
            if isinstance(outcome, Delivered):
                counts.delivered += len(rows)
                settle.delivered.append(
                    repository.Settled(customer_id, rows, outcome.crm_id, batch.send.version)
                )
                if plan.more:
                    result.more.append(customer_id)
                    if outcome.crm_id is not None and outcome.crm_id != change.crm_id:
                        settle.learnt[customer_id] = outcome.crm_id
                continue
            verdict = judge_failure(
                policy=self._policy,
                attempts=max(r.attempts for r in batch.settles),
                status=outcome.status,
                retry_after=parse_retry_after(outcome.retry_after, now),
                now=now,
                scheduled=batch.settles[0].next_attempt_at,
                urgency=wanted[customer_id],
            )
            settle.failures.append(
                repository.Failure(
                    rows, outcome.error, verdict.attempts, verdict.dead, verdict.next_attempt_at
                )
            )
            if verdict.dead:
                counts.dead += len(rows)
                log.warning(
                    "request %s of customer %s is dead after %s attempts: %s",
                    batch.send.id,
                    customer_id,
                    verdict.attempts,
                    outcome.error,
                )
            else:
                counts.failed += len(rows)
                log.info(
                    "request %s of customer %s failed (attempt %s): %s",
                    batch.send.id,
                    customer_id,
                    verdict.attempts,
                    outcome.error,
                )
        return settle

    async def _settle_grouped(self, work: "_SettleWork") -> None:
        """Settle a batch in a transaction shared with every batch that finished meanwhile
        (a group commit without a task of its own: the first batch to settle leads, runs
        the groups until its own is done, then hands the lead to the next waiting). Under
        load, one transaction settles dozens of batches; alone, a batch settles at once."""
        self._settle_queue.append(work)
        if self._settling:
            try:
                lead = await work.answer  # False: settled by the leader's group
            except asyncio.CancelledError:
                if work.answer.done() and not work.answer.cancelled() and work.answer.result():
                    self._pass_lead()  # promoted as we were cancelled: pass it on
                raise
            if not lead:
                return
        self._settling = True
        try:
            while True:
                group, self._settle_queue = self._settle_queue, []
                merged = _merged(group)
                try:
                    done = {work.owner: work.done for work in group}
                    await self.transaction(
                        partial(repository.settle_and_release, outcomes=merged, done=done),
                        autocommit=merged.at_once,
                    )
                except BaseException as error:
                    # Failed, or the leader cancelled (a pass stopped, shutdown): the
                    # group's other batches are answered, never left waiting for it. Their
                    # rows stay; the claims lapse and the customers are delivered again.
                    failed = error if isinstance(error, Exception) else _GroupCutShort()
                    for other in group:
                        if other is not work and not other.answer.done():
                            other.answer.set_exception(failed)
                    if work in group or not isinstance(error, Exception):
                        raise
                    continue
                for other in group:
                    if other is not work and not other.answer.done():
                        other.answer.set_result(False)
                if work in group:
                    return
        finally:
            self._pass_lead()

    def _pass_lead(self) -> None:
        """The leader is done: the first batch still waiting leads next, or nobody."""
        for waiting in self._settle_queue:
            if not waiting.answer.done():
                waiting.answer.set_result(True)
                return
        self._settling = False

    def _after(self, changes: list[Change], outcomes: list[Outcome]) -> None:
        """Once settled: the metrics, and what the outcomes say of the CRM as a whole: a
        failure that speaks for it holds deliveries, else a delivery says it is well."""
        hold: HoldReason | None = None
        delivered = False
        for change, outcome in zip(changes, outcomes, strict=True):
            if self._on_outcome is not None:
                self._on_outcome(change.request, outcome)
            if isinstance(outcome, Delivered):
                delivered = True
                continue
            kind = hold_kind(outcome.status, outcome.unanswered)
            if kind is not None and outcome.whole_call:
                hold = HoldReason(kind, outcome.error)
        if hold is not None:
            self.health.mark_failing(hold)
        elif delivered:
            self.health.mark_healthy()

    # -- plumbing ------------------------------------------------------------------------

    async def transaction(
        self, work: Callable[[AsyncConnection], Awaitable[T]], *, autocommit: bool = False
    ) -> T:
        """`work(connection)` in one transaction of the engine's share of the pool; run
        again when PostgreSQL chose it as a deadlock's victim (it rolled back whole). A
        plain connection, no ORM session: the engine's statements are all Core, and the
        session's bookkeeping around them was 12-20 % of the engine's CPU a customer.

        `autocommit`: on PostgreSQL, each statement of `work` commits on its own, with no
        `BEGIN` and `COMMIT` round trips around them. A batch's claim-and-read runs so:
        the claim is atomic alone, and the queue read after it then sees every row the
        claims' previous holder settled before giving them back. On PostgreSQL both are
        one call of migration 0007's function (`repository.claim_and_read`): one round
        trip instead of four, on the path from a write to its CRM call."""
        for attempt in range(DEADLOCK_ATTEMPTS):
            try:
                async with self._db_slots:
                    if autocommit and self.database.dialect.name == "postgresql":
                        return await self._plainly_closed(work, autocommit=True)
                    if self._on_loop_thread:
                        return await self._plainly_closed(work, autocommit=False)
                    async with self.database.begin() as connection:
                        return await work(connection)
            except DBAPIError as error:
                code = getattr(error.orig, "sqlstate", None)
                if code != DEADLOCK_DETECTED or attempt == DEADLOCK_ATTEMPTS - 1:
                    raise
                log.info("delivery transaction chosen as a deadlock victim; running it again")
        raise AssertionError("unreachable")

    async def _plainly_closed(
        self, work: Callable[[AsyncConnection], Awaitable[T]], *, autocommit: bool
    ) -> T:
        """`work` on a connection closed (given back to the pool) by a plain call, not by
        `async with`, whose exit closes it in a task of its own (SQLAlchemy shields the
        close from cancellation so), keeping it checked out for two or three more turns of
        the event loop. Used only where nothing suspends between the end of the work and
        the return, so no cancellation can land there and the shield guards nothing:

        - SQLite on the loop's thread (`autocommit` False): no statement, commit or close
          suspends. There every API write queued behind the kept connection for SQLite's
          one connection, each waiter woken a turn after the one before (Kafka mode at 483
          writes/s: a write's insert waited 12 ms at p90 and 50 ms at p99, bench/README).
        - PostgreSQL with each statement committing on its own (`autocommit` True, a
          batch's claim): with no transaction left to roll back the return needs no round
          trip (the isolation level is reset on the client), and the shielded close kept
          the batch three turns of the loop from its CRM call."""
        connection = await self.database.connect()
        try:
            if autocommit:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                return await work(connection)
            async with connection.begin():
                return await work(connection)
        finally:
            await connection.close()

    @contextlib.asynccontextmanager
    async def _renewing(self, owner: str) -> AsyncIterator[None]:
        """Keep renewing the batch's claims while it sends, so a slow CRM call never lets
        them lapse. Most batches end long before a third of the lease: the renewing task
        is only made for one still running then. It is stopped between renewals, never
        inside one, and waited for: no renewal lands after the claims are given back."""
        lease = self.lease_seconds
        stop = asyncio.Event()

        async def renew() -> None:
            while not stop.is_set():
                try:
                    await self.transaction(
                        partial(repository.renew, owner=owner, now=utc_now(), lease=lease)
                    )
                except Exception:
                    log.warning("could not renew the claims of batch %s", owner)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), lease / 3)

        task: asyncio.Task[None] | None = None

        def start() -> None:
            nonlocal task
            task = asyncio.create_task(renew(), name=f"lease-{owner}")

        handle = asyncio.get_running_loop().call_later(lease / 3, start)
        try:
            yield
        finally:
            handle.cancel()
            stop.set()
            if task is not None:
                await asyncio.wait({task})

    async def close(self, grace: float = 5.0) -> None:
        """Stop taking kicks; give live batches `grace` seconds, then cut their CRM calls
        short (never a transaction): what they did not deliver stays in the outbox."""
        self._closing = True
        if self._gather_timer is not None:
            self._gather_timer.cancel()
        for timer in self._busy_timers.values():
            timer.cancel()
        self._busy_timers.clear()
        tasks: set[asyncio.Task[None]] = set(self._live)
        if self._noting is not None:
            tasks.add(self._noting)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        if late:
            self.cut_calls()
            _, late = await asyncio.wait(late, timeout=grace)
            for task in late:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cut_calls(self) -> None:
        """Cut short every CRM call in flight (shutdown): their batches give their claims
        back and record nothing."""
        now = asyncio.get_running_loop().time()
        for scope in list(self._calls):
            scope.reschedule(now)


@dataclass
class _SettleWork:
    """A finished batch waiting to be settled: its outcomes, and the claims to give back."""

    settle: repository.Outcomes
    owner: str
    done: set[int]
    # False once settled by another batch's group; True: this batch leads the next one.
    answer: "asyncio.Future[bool]" = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _merged(group: list[_SettleWork]) -> repository.Outcomes:
    """The outcomes of a settling group's batches, as one."""
    merged = repository.Outcomes(
        now=max(w.settle.now for w in group), confirmed=group[0].settle.confirmed
    )
    for work in group:
        merged.delivered += work.settle.delivered
        merged.failures += work.settle.failures
        merged.learnt.update(work.settle.learnt)
    return merged
