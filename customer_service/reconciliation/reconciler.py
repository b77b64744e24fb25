"""Run one reconciliation: compare every customer with the CRM's record, report, repair.

The CRM is read through the connector (`records.CrmRecords`: the mock's own API by
offset, HubSpot's contacts list by its `after` cursor), in neutral records.

Two passes, neither holding a whole side in memory:
1. Page through the CRM's records; for each page,
   read our side of the customer ids it names in one query and classify the page
   (`compare.classify_page`): extra and different records. The ids of our customers that
   have a record are kept in a bitmap.
2. Page through our customers by id (keyset); one not in the bitmap and with no
   undelivered request has no record: missing.

Every finding is confirmed before it is reported (its record read again, our side read
again), so a write delivered while the run pages is not taken for drift. With `repair`,
each confirmed finding's fix is queued at once in `failed_requests` through the outbox
(CREATE for missing, UPDATE for different, DELETE of the record for extra): the usual
order, retries and statuses apply, and the customers are kicked when the run ends.
"""

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.columns import utc_now
from customer_service.crm.client import CrmClient
from customer_service.customers.models import Customer
from customer_service.reconciliation import repository
from customer_service.reconciliation.compare import (
    DriftKind,
    Finding,
    IdBitmap,
    Local,
    classify_page,
    classify_record,
    customer_id_of,
)
from customer_service.reconciliation.records import CrmReadFailed, CrmRecords, records_of
from customer_service.reconciliation.schemas import ReconciliationReport
from customer_service.request_id import current_request_id
from customer_service.sync import outbox
from customer_service.sync.dbwork import BackgroundDatabase
from customer_service.sync.models import Operation
from customer_service.sync.outbox import PENDING_KICKS

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 500


__all__ = ["CrmReadFailed", "Reconciler"]


@dataclass
class _Run:
    repair: bool
    seen: IdBitmap = field(default_factory=IdBitmap)
    checked: int = 0
    skipped: int = 0
    queued: int = 0
    queued_by_kind: dict[str, int] = field(default_factory=dict)
    missing: set[int] = field(default_factory=set)
    extra: set[str] = field(default_factory=set)
    different: set[int] = field(default_factory=set)
    kicks: set[int] = field(default_factory=set)


class Reconciler:
    """Runs reconciliations one at a time and keeps the latest report."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        client: "CrmClient | CrmRecords",
        page_size: int = DEFAULT_PAGE_SIZE,
        kick: Callable[[Iterable[int]], None] | None = None,
        confirms_later: bool = False,
    ) -> None:
        self._sessionmaker = sessionmaker
        # Kafka mode (the connector's `confirms_later`): a customer with a version published
        # and not yet confirmed by the CRM is on its way, like one with requests queued.
        self._awaiting = confirms_later
        # Shielded transactions: a run cancelled at shutdown never strands a connection.
        self._db = BackgroundDatabase(sessionmaker, slots=1)
        # The connector's reader: the mock's client is wrapped (`records.MockRecords`).
        self._records = records_of(client)
        self._page_size = page_size
        self._kick = kick
        self._lock = asyncio.Lock()
        self.latest: ReconciliationReport | None = None
        # Called with each finished report (the metrics listen here).
        self.listeners: list[Callable[[ReconciliationReport], None]] = []

    async def drain(self) -> None:
        """Wait for transactions a cancelled run left to finish (they give their
        connections back)."""
        await self._db.drain()

    async def run(self, repair: bool = False) -> ReconciliationReport:
        """One full run; raises `CrmReadFailed` when the CRM cannot be read."""
        # A run outside a request gets an id of its own, for its log lines, its CRM calls
        # and the deliveries of the fixes it queues.
        token = current_request_id.set(current_request_id.get() or f"reconcile-{uuid.uuid4().hex}")
        try:
            return await self._run(repair)
        finally:
            current_request_id.reset(token)

    async def _run(self, repair: bool) -> ReconciliationReport:
        async with self._lock:
            started = utc_now()
            run = _Run(repair)
            try:
                await self._crm_pass(run)
                await self._customer_pass(run)
            finally:
                # Fixes already queued go out even if the run stopped half-way.
                if run.kicks and self._kick is not None:
                    self._kick(sorted(run.kicks))
            report = ReconciliationReport(
                checked=run.checked,
                skipped=run.skipped,
                missing=sorted(run.missing),
                extra=sorted(run.extra),
                different=sorted(run.different),
                repaired=repair and run.queued == len(run.missing | run.different) + len(run.extra),
                queued=run.queued,
                queued_by_kind=run.queued_by_kind,
                started_at=started,
                finished_at=utc_now(),
            )
            self.latest = report
            for listener in self.listeners:
                listener(report)
            log.info(
                "reconciliation: %s customers checked, %s missing, %s extra, %s different, "
                "%s fixes queued",
                report.checked,
                len(report.missing),
                len(report.extra),
                len(report.different),
                report.queued,
            )
            return report

    async def _local(self, ids: Iterable[int]) -> dict[int, Local]:
        wanted = set(ids)
        expected = self._records.expected
        return await self._db.run(
            lambda session: repository.local_state(session, wanted, expected, self._awaiting)
        )

    async def _crm_pass(self, run: _Run) -> None:
        cursor: str | None = None
        fields = self._records.fields
        while True:
            page = await self._records.page(cursor, self._page_size)
            records = page.records
            named = {customer_id_of(str(r.get("externalId", ""))) for r in records}
            local = await self._local(i for i in named if i is not None)
            for customer_id, ours in local.items():
                if ours.expected is not None:
                    run.seen.add(customer_id)
            for finding in classify_page(records, local, fields):
                await self._settle(run, await self._confirm(finding))
            cursor = page.cursor
            if cursor is None:
                return

    async def _customer_pass(self, run: _Run) -> None:
        after = 0
        while True:
            page = await self._db.run(
                partial(
                    repository.customers_after,
                    after=after,
                    limit=self._page_size,
                    awaiting=self._awaiting,
                )
            )
            if not page:
                return
            for customer_id, busy in page:
                run.checked += 1
                if busy:
                    run.skipped += 1
                elif customer_id not in run.seen:
                    await self._settle(run, await self._confirm_missing(customer_id))
            after = page[-1][0]

    async def _confirm(self, finding: Finding) -> Finding | None:
        """Read the record and our side again: is it still drift, and of which kind?"""
        if finding.crm_id is None:
            return finding
        record = await self._records.get(finding.crm_id)
        if record is None:
            return None
        ours = None
        if finding.customer_id is not None:
            ours = (await self._local([finding.customer_id])).get(finding.customer_id)
        return classify_record(record, ours, self._records.fields)

    async def _confirm_missing(self, customer_id: int) -> Finding | None:
        items = await self._records.find(str(customer_id))
        ours = (await self._local([customer_id])).get(customer_id)
        if items:
            return classify_record(items[0], ours, self._records.fields)
        if ours is None or ours.busy or ours.expected is None:
            return None
        return Finding(DriftKind.MISSING, str(customer_id), customer_id, None)

    async def _settle(self, run: _Run, finding: Finding | None) -> None:
        """Record a confirmed finding and, when repairing, queue its fix."""
        if finding is None:
            return
        if finding.kind is DriftKind.EXTRA:
            run.extra.add(finding.external_id)
        elif finding.customer_id is not None:
            target = run.missing if finding.kind is DriftKind.MISSING else run.different
            target.add(finding.customer_id)
        if not run.repair or finding.customer_id is None:
            return
        fix = partial(_queue_fix_and_kicks, finding=finding, awaiting=self._awaiting)
        queued, kicks = await self._db.run(fix)
        if queued:
            run.queued += 1
            run.queued_by_kind[finding.kind.value] = (
                run.queued_by_kind.get(finding.kind.value, 0) + 1
            )
            run.kicks.update(kicks)


async def _queue_fix_and_kicks(
    session: AsyncSession, *, finding: Finding, awaiting: bool
) -> tuple[bool, set[int]]:
    queued = await _queue_fix(session, finding, awaiting)
    kicks: set[int] = session.info.pop(PENDING_KICKS, set())
    return queued, kicks


async def _queue_fix(session: AsyncSession, finding: Finding, awaiting: bool) -> bool:
    """Queue the request that fixes `finding`, in the caller's transaction; False when our
    side changed meanwhile (a request of that customer is queued now: it will settle it)."""
    customer_id = finding.customer_id
    assert customer_id is not None
    if await repository.has_requests(session, customer_id, awaiting):
        return False
    customer = await session.get(Customer, customer_id)
    if finding.kind is DriftKind.EXTRA:
        if customer is not None or finding.crm_id is None:
            return False
        await outbox.enqueue_record_delete(session, customer_id, finding.crm_id)
        return True
    if customer is None:
        return False
    operation = Operation.CREATE if finding.kind is DriftKind.MISSING else Operation.UPDATE
    await outbox.enqueue(session, customer, operation)
    return True
