"""HubSpot (`CRM_CONNECTOR=hubspot`, SPEC section 4b): contacts kept in step through
HubSpot's CRM v3 batch endpoints, every answer read as HubSpot gives it.

- **Creates and updates**: one `batch/upsert` call for up to `CRM_BATCH_SIZE` (at most
  100) changes, each input `{"id": "<customer id>", "idProperty": HUBSPOT_ID_PROPERTY,
  "properties": {...}}` (`crm.hubspot_mapping`). An upsert by a unique property is
  idempotent: a call repeated after a lost answer finds the contact it made. Each
  result is matched to its customer by the id property's value (results come in no
  promised order), and the contact's HubSpot id is kept as `crm.id`.
- **Deletes**: one `batch/archive` of the HubSpot ids. A customer whose HubSpot id was
  never learnt is looked up first with `batch/read` by the id property; not found means
  gone already, which is what was asked.
- **A 207** settles only the customers its errors name (`whole_call=False`: one record's
  refusal says nothing of HubSpot as a whole); a 400, 409 or 422 refusing the whole batch
  for what one input holds (HubSpot names only the first bad input it finds, if any:
  https://github.com/HubSpot/hubspot-api-python/issues/51) is split in halves, again and
  again, until the input refused is alone: only its request goes `dead` (a 409 is
  retried), the others are delivered. A batch of n with one bad input costs about
  2 log2(n) more calls.
- **Rate limits** (https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines):
  the `X-HubSpot-RateLimit-*` headers pace every call of the process from the first
  answer on (`CallThrottle.advertised`); a 429 `TEN_SECONDLY_ROLLING` pauses every call
  for its `Retry-After` or the window (`crm.hubspot_client`) and holds deliveries as any
  429 does; a 429 `DAILY` holds deliveries until the daily limit resets
  (`hubspot_answers.daily_reset_seconds`): meanwhile no call is made at all, the probe
  included, and every request waits with a `Retry-After` of the time left. The hold shows
  as `rate_limited` on the dashboard, `/ready` and `crm_sync_deliveries_held`.
- **401 and 403**: our token is refused. The whole call fails with that status, which
  holds deliveries (`hold.CREDENTIALS`) and kills no request (`retry.is_permanent`).
- **The probe** is a one-contact read of the contacts list.
- **Secrets**: the token is in the session's headers only; every text that leaves this
  module (`lastError`, a hold's detail, a log line) is redacted of it.
- **Reconciliation** reads through `HubSpotRecords`: the contacts list paged with the
  `after` cursor, and `batch/read` to confirm a finding.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from customer_service.config import Settings, load_field_map
from customer_service.crm.client import CrmUnreachable
from customer_service.crm.hubspot_answers import (
    DAILY,
    SPLIT_STATUSES,
    daily_reset_seconds,
    record_errors,
    results_by,
)
from customer_service.crm.hubspot_client import MAX_BATCH, HubSpotAnswer, HubSpotClient
from customer_service.crm.hubspot_mapping import PropertyMap
from customer_service.crm.record_fields import COMPARED_FIELDS
from customer_service.crm.throttle import CallThrottle
from customer_service.customers.models import Customer
from customer_service.reconciliation.records import CrmReadFailed, RecordPage
from customer_service.sync.connector import CallObserver, Change
from customer_service.sync.connectors.batch_calls import Outcomes, fail_all, guarded
from customer_service.sync.connectors.quota_hold import QuotaHold
from customer_service.sync.hold import HoldKind, HoldReason, hold_kind
from customer_service.sync.models import Operation
from customer_service.sync.outcome import Delivered, Failed, Outcome

log = logging.getLogger(__name__)

# Calls in flight for live deliveries; the throttle paces them to HubSpot's limit.
CALLS_IN_FLIGHT = 64
# A read refused by the ten-second limit is asked again (after the throttle's pause).
READ_ATTEMPTS = 3

T = TypeVar("T")


class HubSpotConnector:
    confirms_later = False

    def __init__(
        self,
        settings: Settings,
        on_call: CallObserver | None = None,
        throttle: CallThrottle | None = None,
    ) -> None:
        throttle = throttle or CallThrottle(settings.crm_max_requests_per_second)
        # HubSpot states its limit in every answer: the first call learns it alone.
        throttle.wait_for_first_answer()
        self.client = HubSpotClient(settings, on_call, throttle)
        overrides = load_field_map(settings.crm_field_map) if settings.crm_field_map else None
        self.mapping = PropertyMap.of(settings.hubspot_id_property, overrides)
        self.batch_size = min(settings.crm_batch_size or MAX_BATCH, MAX_BATCH)
        self.calls_in_flight = CALLS_IN_FLIGHT
        # The daily limit: no call at all until it resets.
        self.quota = QuotaHold("HubSpot's daily API limit", self.client.redact, log)

    async def start(self, serving: bool) -> None:
        del serving  # the session opens on the first call

    async def close(self) -> None:
        await self.client.aclose()

    def reader(self) -> "HubSpotRecords":
        return HubSpotRecords(self)

    # -- the daily limit ------------------------------------------------------------------

    def limited(self, answer: HubSpotAnswer) -> Failed:
        """A 429's failure; a `DAILY` one starts the daily hold."""
        if answer.policy != DAILY:
            return self._failed(answer)
        now = datetime.now(UTC)
        seconds = daily_reset_seconds(answer.retry_after, now)
        return self.quota.start(seconds, now, answer.describe())

    def _key(self, result: dict[str, Any]) -> str:
        """The customer id a result of a batch names (its id property's value)."""
        properties = result.get("properties")
        return self.mapping.external_id(properties if isinstance(properties, dict) else {})

    def _failed(self, answer: HubSpotAnswer) -> Failed:
        return Failed(self.client.redact(answer.describe()), answer.status, answer.retry_after)

    # -- sending ----------------------------------------------------------------------------

    async def send(self, changes: Sequence[Change]) -> list[Outcome]:
        """Upserts in one call, deletes in another (after a lookup of those whose HubSpot
        id was never learnt); one outcome per change, in order."""
        if self.quota.left() > 0:
            held = self.quota.failure()
            return [held for _ in changes]
        upserts = [c for c in changes if c.request.operation != Operation.DELETE]
        deletes = [c for c in changes if c.request.operation == Operation.DELETE]
        parts: list[Awaitable[Outcomes]] = []
        if upserts:
            parts.append(self._guarded(upserts, self._upsert(upserts)))
        if deletes:
            parts.append(self._guarded(deletes, self._delete(deletes)))
        outcomes: Outcomes = {}
        for found in await asyncio.gather(*parts):
            outcomes.update(found)
        return [outcomes[id(change)] for change in changes]

    async def _guarded(self, changes: list[Change], call: Awaitable[Outcomes]) -> Outcomes:
        """A call's outcomes by change; whatever it raises fails them all."""
        return await guarded("HubSpot", changes, call, self.client.redact, log)

    async def _split(
        self,
        items: list[T],
        call: Callable[[list[T]], Awaitable[Outcomes]],
    ) -> Outcomes:
        """Send the two halves of a batch refused whole (each split again if refused)."""
        middle = len(items) // 2
        halves = await asyncio.gather(call(items[:middle]), call(items[middle:]))
        return {**halves[0], **halves[1]}

    def _whole(self, changes: Sequence[Change], answer: HubSpotAnswer) -> Outcomes:
        """Every change of a call failed by its answer as a whole."""
        failed = self.limited(answer) if answer.status == 429 else self._failed(answer)
        return fail_all(changes, failed)

    async def _upsert(self, changes: list[Change]) -> Outcomes:
        inputs = [
            {
                "id": str(change.customer_id),
                "idProperty": self.mapping.id_property,
                "properties": self.mapping.to_properties(change.request.payload or {}),
            }
            for change in changes
        ]
        answer = await self.client.upsert(inputs)
        if answer.status in SPLIT_STATUSES and len(changes) > 1:
            return await self._split(changes, self._upsert)
        if not answer.ok:
            return self._whole(changes, answer)
        results = results_by(answer.body, self._key)
        errors = record_errors(answer.body)
        outcomes: Outcomes = {}
        for change in changes:
            key = str(change.customer_id)
            if key in errors:
                error = errors[key]
                detail = self.client.redact(error.detail)
                outcomes[id(change)] = Failed(detail, error.status, whole_call=False)
            elif key in results:
                outcomes[id(change)] = Delivered(str(results[key]["id"]))
            elif len(changes) == 1 and len(results) == 1:
                outcomes[id(change)] = Delivered(next(iter(results.values()))["id"])
            else:
                outcomes[id(change)] = Failed(
                    f"{self.client.redact(answer.describe())} without a result for this customer",
                    answer.status,
                    whole_call=False,
                )
        return outcomes

    async def _delete(self, changes: list[Change]) -> Outcomes:
        outcomes: Outcomes = {}
        targets: list[tuple[Change, str]] = [(c, c.crm_id) for c in changes if c.crm_id]
        unknown = [c for c in changes if not c.crm_id]
        if unknown:
            found, settled = await self._look_up(unknown)
            outcomes.update(settled)
            targets += found
        if targets:
            outcomes.update(await self._archive(targets))
        return outcomes

    async def _look_up(self, changes: list[Change]) -> tuple[list[tuple[Change, str]], Outcomes]:
        """The HubSpot ids of customers whose id was never learnt (`batch/read` by the id
        property); those HubSpot has no contact of are done already."""
        ids = [str(change.customer_id) for change in changes]
        answer = await self.client.read(ids, [self.mapping.id_property], self.mapping.id_property)
        if not answer.ok:
            return [], self._whole(changes, answer)
        results = results_by(answer.body, self._key)
        errors = record_errors(answer.body)
        found: list[tuple[Change, str]] = []
        settled: Outcomes = {}
        for change in changes:
            key = str(change.customer_id)
            if key in results:
                found.append((change, str(results[key]["id"])))
            elif key in errors and errors[key].status != 404:
                error = errors[key]
                detail = self.client.redact(error.detail)
                settled[id(change)] = Failed(detail, error.status, whole_call=False)
            else:
                settled[id(change)] = Delivered(None)  # no such contact: gone already
        return found, settled

    async def _archive(self, targets: list[tuple[Change, str]]) -> Outcomes:
        answer = await self.client.archive([hubspot_id for _, hubspot_id in targets])
        if answer.status in SPLIT_STATUSES and len(targets) > 1:
            return await self._split(targets, self._archive)
        if not answer.ok:
            return self._whole([change for change, _ in targets], answer)
        errors = record_errors(answer.body)
        outcomes: Outcomes = {}
        for change, hubspot_id in targets:
            error = errors.get(hubspot_id)
            if error is None or error.status == 404:
                # Archived, or no such contact: either way it is gone, as asked.
                outcomes[id(change)] = Delivered(None)
            else:
                detail = self.client.redact(error.detail)
                outcomes[id(change)] = Failed(detail, error.status, whole_call=False)
        return outcomes

    # -- the probe ----------------------------------------------------------------------

    async def probe(self) -> HoldReason | None:
        """A one-contact read: None when HubSpot takes calls, else why not. While the
        daily limit is reached, no call is made until its reset."""
        if self.quota.left() > 0:
            return HoldReason(HoldKind.RATE_LIMITED, self.quota.detail)
        try:
            answer = await self.client.page(None, 1, [self.mapping.id_property])
        except CrmUnreachable as exc:
            return HoldReason(exc.kind, self.client.redact(_no_answer(exc)))
        if answer.ok:
            return None
        if answer.status == 429:
            return HoldReason(HoldKind.RATE_LIMITED, self.limited(answer).error)
        detail = self.client.redact(answer.describe())
        return HoldReason(hold_kind(answer.status) or HoldKind.CRM_ERROR, detail)


def _no_answer(exc: CrmUnreachable) -> str:
    """Why a call got no answer: HubSpot unreachable, or our own pause after its 429."""
    if exc.kind is HoldKind.RATE_LIMITED:
        return f"HubSpot rate limit (429 TEN_SECONDLY_ROLLING): calls paused: {exc}"
    return f"HubSpot unreachable: {exc}"


class HubSpotRecords:
    """HubSpot's contacts as reconciliation's neutral records (`reconciliation.records`):
    the contacts list paged by its `after` cursor, `batch/read` by HubSpot id or by the id
    property to confirm a finding."""

    fields: tuple[str, ...] = COMPARED_FIELDS

    def __init__(self, connector: HubSpotConnector) -> None:
        self._connector = connector
        self._client = connector.client
        self._mapping = connector.mapping

    def expected(self, customer: Customer) -> dict[str, Any]:
        return self._mapping.expected(customer)

    async def _read(self, call: Callable[[], Awaitable[HubSpotAnswer]]) -> HubSpotAnswer:
        """An answer HubSpot gave (2xx, 207 included), else `CrmReadFailed`; a 429 of the
        ten-second window is asked again after the throttle's pause."""
        if self._connector.quota.left() > 0:
            raise CrmReadFailed(f"HubSpot cannot be read: {self._connector.quota.detail}")
        for attempt in range(READ_ATTEMPTS):
            try:
                answer = await call()
            except CrmUnreachable as exc:
                raise CrmReadFailed(
                    self._client.redact(f"HubSpot cannot be read: HubSpot unreachable: {exc}")
                ) from None
            if answer.ok:
                return answer
            if answer.status == 429:
                failed = self._connector.limited(answer)
                if answer.policy != DAILY and attempt < READ_ATTEMPTS - 1:
                    continue
                raise CrmReadFailed(f"HubSpot cannot be read: {failed.error}")
            break
        detail = self._client.redact(answer.describe())
        raise CrmReadFailed(f"HubSpot cannot be read: {detail}")

    async def page(self, cursor: str | None, limit: int) -> RecordPage:
        names = self._mapping.names()
        answer = await self._read(lambda: self._client.page(cursor, limit, names))
        body = answer.body if isinstance(answer.body, dict) else {}
        results = body.get("results")
        records = [self._mapping.record(r) for r in results or [] if isinstance(r, dict)]
        paging = body.get("paging")
        following = paging.get("next") if isinstance(paging, dict) else None
        after = following.get("after") if isinstance(following, dict) else None
        return RecordPage(records, str(after) if after and records else None)

    async def _read_one(self, value: str, id_property: str | None) -> list[dict[str, Any]]:
        names = self._mapping.names()
        answer = await self._read(lambda: self._client.read([value], names, id_property))
        body = answer.body if isinstance(answer.body, dict) else {}
        results = body.get("results")
        return [self._mapping.record(r) for r in results or [] if isinstance(r, dict)]

    async def get(self, crm_id: str) -> dict[str, Any] | None:
        found = await self._read_one(crm_id, None)
        return found[0] if found else None

    async def find(self, external_id: str) -> list[dict[str, Any]]:
        return await self._read_one(external_id, self._mapping.id_property)
