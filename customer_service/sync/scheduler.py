"""The retry job: every `RETRY_INTERVAL_SECONDS`, one pass over the due requests.

A pass groups the due requests by customer and works on up to `RETRY_CONCURRENCY`
customers at once; inside a customer, requests go one at a time, oldest first, and the
group stops at its first failure (see `delivery`). A pass also runs at start-up, so
what a crashed process left behind goes out at once.

While the CRM is failing, a probe asks it every `RECOVERY_PROBE_SECONDS` whether it is
back; when it is, a forced pass (backoff ignored) starts draining the backlog within
seconds instead of at the next tick (guarantee 7).
"""

import asyncio
import logging
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.crm.client import CrmClient
from customer_service.sync import repository
from customer_service.sync.delivery import Deliverer, PassCounts
from customer_service.sync.retry import Urgency

log = logging.getLogger(__name__)


class RetryJob:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        deliverer: Deliverer,
        settings: Settings,
        client: CrmClient | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._deliverer = deliverer
        self._settings = settings
        self._client = client
        self._forced: asyncio.Task[PassCounts] | None = None
        self._periodic: asyncio.Task[PassCounts] | None = None
        self._follow_up: asyncio.Task[None] | None = None
        # RETRY_CONCURRENCY bounds the process, not each pass: an operator's pass running
        # beside the periodic one shares the same slots.
        self._slots = asyncio.Semaphore(settings.retry_concurrency)
        deliverer.health.on_recovery.append(self.start_forced_pass)

    async def run_pass(self, urgency: Urgency = Urgency.DUE) -> PassCounts:
        """One pass now; with an urgency other than DUE, over every pending and failed
        request, due or not (see `Urgency`)."""
        every = urgency is not Urgency.DUE
        async with self._sessionmaker() as session:
            customers = await repository.due_customer_ids(session, utc_now(), every)
        totals = PassCounts()
        if not customers:
            return totals
        queue: asyncio.Queue[int] = asyncio.Queue()
        for customer_id in customers:
            queue.put_nowait(customer_id)

        async def worker() -> None:
            while not queue.empty():
                customer_id = queue.get_nowait()
                async with self._slots:
                    try:
                        totals.add(await self._deliverer.deliver_customer(customer_id, urgency))
                    except Exception:
                        log.exception("retry of customer %s failed", customer_id)

        workers = min(self._settings.retry_concurrency, len(customers))
        await asyncio.gather(*(worker() for _ in range(workers)))
        log.info("retry pass over %s customers: %s", len(customers), totals.as_dict())
        return totals

    async def tick(self) -> None:
        """The periodic pass; skipped while a recovery pass covers everything anyway."""
        if self._forced is not None and not self._forced.done():
            return
        self._periodic = asyncio.create_task(self.run_pass(), name="periodic-retry")
        await asyncio.wait({self._periodic})
        if self._periodic.cancelled():
            return  # superseded by a recovery pass
        if self._periodic.exception() is not None:
            log.error("retry pass failed", exc_info=self._periodic.exception())
            return
        self._follow_up_if_busy(self._periodic.result())

    def start_forced_pass(self) -> None:
        """Drain everything now (the CRM is back); one such pass at a time, and it takes
        over from a periodic pass in flight (whose customers it covers too)."""
        if self._forced is not None and not self._forced.done():
            return
        if self._periodic is not None and not self._periodic.done():
            self._periodic.cancel()
        self._forced = asyncio.create_task(self._forced_pass(), name="forced-retry")

    async def _forced_pass(self) -> PassCounts:
        counts = await self.run_pass(Urgency.RECOVERY)
        self._follow_up_if_busy(counts)
        return counts

    def _follow_up_if_busy(self, counts: PassCounts) -> None:
        """Customers claimed elsewhere may be a crashed replica's (or this process's before
        a restart): look again once such a claim has expired, not only at the next tick."""
        if counts.busy and (self._follow_up is None or self._follow_up.done()):
            self._follow_up = asyncio.create_task(self._after_lease(), name="claim-follow-up")

    async def _after_lease(self) -> None:
        await asyncio.sleep(self._settings.claim_lease_seconds + 0.5)
        await self.tick()

    async def probe(self) -> None:
        """While the CRM is suspect, ask it if it is back; if so, drain at once."""
        if not self._deliverer.health.suspect or self._client is None:
            return
        if await self._client.ping():
            log.info("the CRM answers again: draining the backlog now")
            self._deliverer.health.suspect = False
            self.start_forced_pass()

    async def close(self) -> None:
        """Cancel the background passes (what they did not finish stays in the outbox)."""
        tasks = [t for t in (self._forced, self._periodic, self._follow_up) if t is not None]
        for task in tasks:
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
        max_instances=1,
        coalesce=True,
        id="recovery-probe",
    )
    return scheduler
