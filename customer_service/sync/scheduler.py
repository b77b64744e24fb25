"""The retry job: every `RETRY_INTERVAL_SECONDS`, one pass over the due requests.

A pass groups the due requests by customer and delivers them in the engine's batches
(`engine.DeliveryEngine.run_pass`), with at most `RETRY_CONCURRENCY` CRM calls in flight
(every pass of the process shares that bound); inside a customer, requests go one at a
time, oldest first, and the customer stops at its first failure. A pass also runs at start-up, so
what a crashed process left behind goes out at once.

While the CRM is failing, a probe asks it every `RECOVERY_PROBE_SECONDS` whether it is
back; when it is, a forced pass (backoff ignored) starts draining the backlog within
seconds instead of at the next tick (guarantee 7).
"""

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.sync import repository
from customer_service.sync.engine import DeliveryEngine, PassCounts
from customer_service.sync.hold import HoldReason
from customer_service.sync.retry import Urgency

log = logging.getLogger(__name__)


class Prober(Protocol):
    async def probe(self) -> HoldReason | None: ...


class RetryJob:
    """Owns the background passes of one process and stops them cleanly.

    - One periodic pass at a time (`tick`: the interval job and the follow-up after a
      lease both come through a lock, and each reads only the pass it started).
    - A recovery pass (`start_forced_pass`) takes over from a periodic pass in flight by
      asking it to stop *between batches*; nothing is cancelled in the middle of a
      delivery, and the customers it had not reached are the recovery pass's anyway.
    - `close` asks every pass to stop between batches, gives batches in flight a grace
      period, then cuts their CRM calls short (`DeliveryEngine.cut_calls`: never a
      transaction); what was not delivered stays in the outbox.
    """

    def __init__(
        self,
        engine: DeliveryEngine,
        settings: Settings,
        prober: Prober | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._prober = prober
        self._forced: asyncio.Task[PassCounts] | None = None
        self._periodic: asyncio.Task[PassCounts] | None = None
        self._periodic_stop: asyncio.Event | None = None
        self._periodic_lock = asyncio.Lock()
        self._follow_up: asyncio.Task[None] | None = None
        self._follow_up_at: float | None = None
        self._closing = asyncio.Event()
        # Whether the first periodic pass has started (it leaves nothing out).
        self._started = False
        # RETRY_CONCURRENCY bounds the process, not each pass: an operator's pass running
        # beside the periodic one shares the same slots.
        self._slots = asyncio.Semaphore(settings.retry_concurrency)
        engine.health.on_recovery.append(self.start_forced_pass)

    async def run_pass(
        self,
        urgency: Urgency = Urgency.DUE,
        stop: asyncio.Event | None = None,
        leave_fresh: bool = False,
    ) -> PassCounts:
        """One pass now; with an urgency other than DUE, over every pending and failed
        request, due or not (see `Urgency`). Once `stop` is set (or the job closes) the
        pass takes no further customer; those it is delivering finish. `leave_fresh`:
        leave out the customers whose oldest request is younger than a claim's lease and
        untried (`_fresh_since`)."""
        every = urgency is not Urgency.DUE
        now = utc_now()
        fresh_since = self._fresh_since(now) if leave_fresh else None
        customers = await self._engine.transaction(
            lambda session: repository.due_customer_ids(session, now, every, fresh_since)
        )
        if not customers:
            return PassCounts()

        def stopped() -> bool:
            return self._closing.is_set() or (stop is not None and stop.is_set())

        totals, taken = await self._engine.run_pass(
            customers, urgency, self._slots, self._settings.retry_concurrency, stopped
        )
        left = len(customers) - taken
        log.info(
            "retry pass over %s customers%s: %s",
            len(customers) - left,
            f" ({left} left to the pass that took over)" if left else "",
            totals.as_dict(),
        )
        return totals

    async def tick(self) -> None:
        """The periodic pass. One at a time: a tick that finds one in flight (or a
        recovery pass) waits for it, then runs its own, so the follow-up after a lease
        is never lost."""
        async with self._periodic_lock:
            forced = self._forced
            if forced is not None and not forced.done():
                await asyncio.wait({forced})
            if self._closing.is_set():
                return
            stop = asyncio.Event()
            # The first pass takes everything: what an earlier process left behind.
            leave_fresh, self._started = self._started, True
            task = asyncio.create_task(
                self.run_pass(Urgency.DUE, stop, leave_fresh), name="periodic-retry"
            )
            self._periodic, self._periodic_stop = task, stop
            try:
                await asyncio.wait({task})
            finally:
                self._periodic_stop = None
        if task.cancelled():
            return  # the job is closing
        error = task.exception()
        if error is not None:
            log.error("retry pass failed", exc_info=error)
            return
        await self._plan_follow_up(task.result())

    def _fresh_since(self, now: datetime) -> datetime:
        """A request written after this and never tried is left to the delivery its write
        kicked (in this replica or another). A periodic pass (or its follow-up) under a
        steady load found every customer being delivered and claimed none, then asked for
        a follow-up for those "busy" customers, and so on every lease: each such pass
        fought the live deliveries for their claims (sync lag p99 episodes of 0.5-3 s at
        471 writes/s on PostgreSQL, `bench/README.md` step 15). What a write's replica
        never delivered (a crash right after the commit) is taken by the first periodic pass
        once it is a lease old, as a crashed replica's claimed customers would be."""
        return now - timedelta(seconds=self._settings.claim_lease_seconds)

    def start_forced_pass(self) -> None:
        """Drain everything now (the CRM is back); one such pass at a time. A periodic
        pass in flight stops taking customers and leaves the rest to this one."""
        if self._closing.is_set() or (self._forced is not None and not self._forced.done()):
            return
        if self._periodic_stop is not None:
            self._periodic_stop.set()
        self._forced = asyncio.create_task(self._forced_pass(), name="forced-retry")

    async def _forced_pass(self) -> PassCounts:
        counts = await self.run_pass(Urgency.RECOVERY)
        await self._plan_follow_up(counts)
        return counts

    def idle(self) -> bool:
        """No background pass of this job is running."""
        tasks = (self._forced, self._periodic)
        return all(task is None or task.done() for task in tasks)

    async def _plan_follow_up(self, counts: PassCounts) -> None:
        """Look again before the next tick when this pass left work that will be due soon:
        customers claimed elsewhere (maybe a crashed replica's, or this process's before a
        restart) once such a claim can have expired; while the CRM answers, failed
        requests (a timeout, a flaky call) at their next attempt time when that comes
        before the next tick. While the CRM is down the probe, not this, brings the next pass.
        One follow-up task serves every request, at the earliest time asked."""
        if self._closing.is_set():
            return
        loop = asyncio.get_running_loop()
        wanted: list[float] = []
        if counts.busy:
            wanted.append(loop.time() + self._settings.claim_lease_seconds + 0.5)
        if not self._engine.health.suspect:
            now = utc_now()
            due = await self._engine.transaction(repository.next_attempt_at)
            # One due already that this pass did not take is claimed elsewhere (the lease
            # follow-up covers it) or behind a dead request: looking again at once would
            # only spin. After a pass that sent something, it may simply be next.
            if due is not None and (due > now or counts.attempted):
                wait = max(0.0, (due - now).total_seconds()) + 0.1
                # Later than the next tick: the periodic pass takes it then.
                if wait < self._settings.retry_interval_seconds:
                    wanted.append(loop.time() + wait)
        if not wanted:
            return
        at = min(wanted)
        log.info(
            "looking again in %.1f s (busy customers or failed requests left)", at - loop.time()
        )
        self._follow_up_at = at if self._follow_up_at is None else min(self._follow_up_at, at)
        if self._follow_up is None or self._follow_up.done():
            self._follow_up = asyncio.create_task(self._follow_up_loop(), name="retry-follow-up")

    async def _follow_up_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._follow_up_at is not None:
            delay = self._follow_up_at - loop.time()
            if delay > 0:
                await asyncio.sleep(min(delay, 1.0))  # an earlier request may come meanwhile
                continue
            self._follow_up_at = None
            await self.tick()  # may ask for another follow-up: this loop serves it

    async def probe(self) -> None:
        """While the CRM is suspect, ask it if it is back; if so, drain at once, else
        say why it is not (`CrmHealth.mark_failing`: logged when the reason changes)."""
        health = self._engine.health
        if not health.suspect or self._prober is None:
            return
        hold = await self._prober.probe()
        if hold is not None:
            health.mark_failing(hold)
            return
        log.info("the CRM answers: draining the backlog now")
        health.mark_healthy()  # starts the recovery pass

    async def close(self, grace: float = 5.0) -> None:
        """Stop the passes between batches; batches in flight get `grace` seconds, then
        their CRM calls are cut short (what they did not finish stays in the outbox)."""
        self._closing.set()
        if self._periodic_stop is not None:
            self._periodic_stop.set()
        if self._follow_up is not None:
            self._follow_up.cancel()
        tasks = {t for t in (self._forced, self._periodic, self._follow_up) if t is not None}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        if late:
            self._engine.cut_calls()
            _, late = await asyncio.wait(late, timeout=grace)
            for task in late:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def build_scheduler(job: RetryJob, settings: Settings) -> AsyncIOScheduler:
    """APScheduler with the retry job (first run now) and the recovery probe."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        job.tick,
        "interval",
        seconds=settings.retry_interval_seconds,
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
        id="retry-pass",
    )
    scheduler.add_job(
        job.probe,
        "interval",
        seconds=settings.recovery_probe_seconds,
        next_run_time=datetime.now(UTC),  # a new process starts suspect: ask at once
        max_instances=1,
        coalesce=True,
        id="recovery-probe",
    )
    return scheduler
