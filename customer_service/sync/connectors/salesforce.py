"""Salesforce (`CRM_CONNECTOR=salesforce`, SPEC section 4b): Contacts kept in step through
Salesforce's REST API, every answer read as Salesforce gives it.

- **Auth**: the OAuth 2.0 client credentials flow; one token shared by the process's
  calls, renewed once on a 401 (`crm.salesforce_client`). A token refused holds
  deliveries as credentials refused (`hold.CREDENTIALS`, 401): no request is `dead`.
- **Creates and updates**: one sObject Collections upsert by external id (`PATCH
  .../composite/sobjects/Contact/{SALESFORCE_EXTERNAL_ID_FIELD}`, `allOrNone` false) for
  up to `CRM_BATCH_SIZE` (at most 200) changes
  (https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-upsert.html).
  An upsert by external id is idempotent: a call repeated after a lost answer (a crash,
  a timeout) finds the Contact it made. The answer is one result per record, in the
  order sent: each customer is settled on its own result (`salesforce_answers`), its
  Salesforce Id kept as `crm.id`; a refused record never fails the others and never
  holds deliveries (`whole_call=False`). A customer whose payload has no last name is
  settled `dead` before any call (Salesforce requires a Contact's LastName).
- **Deletes**: one `DELETE .../composite/sobjects?ids=...&allOrNone=false` of the Ids
  (https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-delete.html);
  a customer whose Id was never learnt is looked up first by its external id with SOQL;
  no Contact, or `ENTITY_IS_DELETED`, means gone already, which is what was asked.
- **`REQUEST_LIMIT_EXCEEDED`** (403: the org's API limits spent) holds deliveries, as
  HubSpot's daily limit does: no call at all, the probe included, until its Retry-After
  or `salesforce_answers.LIMIT_HOLD_SECONDS`; every request waits with a Retry-After of
  the time left, shown as `rate_limited` on the dashboard, `/ready` and
  `crm_sync_deliveries_held`. Another 403, and a 401 after a new token, hold deliveries
  as credentials refused.
- **The probe** is a one-record SOQL query (after a token, if there is none).
- **Secrets**: the client secret and the tokens are redacted from every text that leaves
  this module (`lastError`, a hold's detail, a log line).
- **Reconciliation** reads through `SalesforceRecords`: SOQL through `/query`, following
  `nextRecordsUrl` (https://developer.salesforce.com/docs/platform/api-rest/guide/dome-query.html).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from customer_service.config import Settings, load_field_map
from customer_service.crm.client import CrmUnreachable
from customer_service.crm.record_fields import COMPARED_FIELDS
from customer_service.crm.salesforce_answers import (
    GONE,
    LIMIT_EXCEEDED,
    limit_hold_seconds,
    record_error,
    record_id,
    soql_string,
)
from customer_service.crm.salesforce_client import (
    MAX_BATCH,
    SOBJECT,
    SalesforceAnswer,
    SalesforceClient,
    TokenRefused,
)
from customer_service.crm.salesforce_mapping import FieldMap
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

# Calls in flight for live deliveries.
CALLS_IN_FLIGHT = 64
# The Ids one lookup query names (a SOQL `IN` list; the query string stays short).
LOOKUP_BATCH = 200


class SalesforceConnector:
    confirms_later = False

    def __init__(
        self,
        settings: Settings,
        on_call: CallObserver | None = None,
        throttle: CallThrottle | None = None,
    ) -> None:
        throttle = throttle or CallThrottle(settings.crm_max_requests_per_second)
        self.client = SalesforceClient(settings, on_call, throttle)
        overrides = load_field_map(settings.crm_field_map) if settings.crm_field_map else None
        self.mapping = FieldMap.of(settings.salesforce_external_id_field, overrides)
        self.batch_size = min(settings.crm_batch_size or MAX_BATCH, MAX_BATCH)
        self.calls_in_flight = CALLS_IN_FLIGHT
        # REQUEST_LIMIT_EXCEEDED: no call at all until it lapses (a sooner end never
        # shortens a hold running).
        self.quota = QuotaHold("Salesforce's API limit", self.client.redact, log, keep_later=True)

    async def start(self, serving: bool) -> None:
        del serving  # the session opens, and the token is fetched, on the first call

    async def close(self) -> None:
        await self.client.aclose()

    def reader(self) -> "SalesforceRecords":
        return SalesforceRecords(self)

    # -- the API limit ----------------------------------------------------------------------

    def limited(self, answer: SalesforceAnswer) -> Failed:
        """`REQUEST_LIMIT_EXCEEDED`: deliveries held until its Retry-After, or a while."""
        now = datetime.now(UTC)
        seconds = limit_hold_seconds(answer.retry_after, now)
        return self.quota.start(seconds, now, answer.describe())

    def answer_failure(self, answer: SalesforceAnswer) -> Failed:
        """A whole call's failure by its answer."""
        if answer.code == LIMIT_EXCEEDED:
            return self.limited(answer)
        return Failed(self.client.redact(answer.describe()), answer.status, answer.retry_after)

    def token_failure(self, refused: TokenRefused) -> Failed:
        """No token: our client credentials refused (4xx: held as a 401), the limit, or
        the login endpoint's own trouble."""
        answer = refused.answer
        if answer.code == LIMIT_EXCEEDED:
            return self.limited(answer)
        detail = self.client.redact(f"no Salesforce access token: {refused}")
        status = 401 if 400 <= answer.status < 500 else answer.status
        return Failed(detail, status, answer.retry_after)

    # -- sending ----------------------------------------------------------------------------

    async def send(self, changes: Sequence[Change]) -> list[Outcome]:
        """Upserts in one call, deletes in another (after a lookup of those whose Id was
        never learnt); one outcome per change, in order."""
        if self.quota.left() > 0:
            held = self.quota.failure()
            return [held for _ in changes]
        outcomes: Outcomes = {}
        upserts: list[Change] = []
        for change in changes:
            if change.request.operation == Operation.DELETE:
                continue
            missing = self.mapping.missing_last_name(change.request.payload or {})
            if missing is not None:
                outcomes[id(change)] = Failed(missing, 400, whole_call=False)
            else:
                upserts.append(change)
        deletes = [c for c in changes if c.request.operation == Operation.DELETE]
        parts: list[Awaitable[Outcomes]] = []
        if upserts:
            parts.append(self._guarded(upserts, self._upsert(upserts)))
        if deletes:
            parts.append(self._guarded(deletes, self._delete(deletes)))
        for found in await asyncio.gather(*parts):
            outcomes.update(found)
        return [outcomes[id(change)] for change in changes]

    async def _guarded(self, changes: list[Change], call: Awaitable[Outcomes]) -> Outcomes:
        """A call's outcomes by change; whatever it raises fails them all (no token as
        `token_failure` says)."""
        return await guarded("Salesforce", changes, call, self.client.redact, log, self._refusal)

    def _refusal(self, exc: Exception) -> Failed | None:
        return self.token_failure(exc) if isinstance(exc, TokenRefused) else None

    def _whole(self, changes: Sequence[Change], answer: SalesforceAnswer) -> Outcomes:
        return fail_all(changes, self.answer_failure(answer))

    def _results(self, answer: SalesforceAnswer, count: int) -> list[Any] | None:
        body = answer.body
        return body if isinstance(body, list) and len(body) == count else None

    def _no_result(self, answer: SalesforceAnswer) -> Failed:
        text = f"{self.client.redact(answer.describe())} without one result per record"
        return Failed(text, 502, whole_call=False)

    async def _upsert(self, changes: list[Change]) -> Outcomes:
        records = [self.mapping.to_record(change.request.payload or {}) for change in changes]
        answer = await self.client.upsert(records, self.mapping.external_id_field)
        if not answer.ok:
            return self._whole(changes, answer)
        results = self._results(answer, len(changes))
        if results is None:
            return fail_all(changes, self._no_result(answer))
        outcomes: Outcomes = {}
        for change, result in zip(changes, results, strict=True):
            error = record_error(result)
            crm_id = record_id(result)
            if error is not None:
                detail = self.client.redact(error.detail)
                outcomes[id(change)] = Failed(detail, error.status, whole_call=False)
            elif crm_id is None:
                outcomes[id(change)] = Failed(
                    "Salesforce answered a success without an Id for this record",
                    502,
                    whole_call=False,
                )
            else:
                outcomes[id(change)] = Delivered(crm_id)
        return outcomes

    async def _delete(self, changes: list[Change]) -> Outcomes:
        outcomes: Outcomes = {}
        targets: list[tuple[Change, str]] = [(c, c.crm_id) for c in changes if c.crm_id]
        unknown = [c for c in changes if not c.crm_id]
        for start in range(0, len(unknown), LOOKUP_BATCH):
            found, settled = await self._look_up(unknown[start : start + LOOKUP_BATCH])
            outcomes.update(settled)
            targets += found
        for change, _ in targets:
            outcomes[id(change)] = Delivered(None)
        for start in range(0, len(targets), MAX_BATCH):
            part = targets[start : start + MAX_BATCH]
            for key, outcome in (await self._delete_ids(part)).items():
                if isinstance(outcomes.get(key), Delivered):  # a customer's first failure
                    outcomes[key] = outcome
        return outcomes

    async def _look_up(self, changes: list[Change]) -> tuple[list[tuple[Change, str]], Outcomes]:
        """The Ids of the Contacts of customers whose Id was never learnt (SOQL by the
        external id); a customer with none is done already."""
        field = self.mapping.external_id_field
        values = ", ".join(soql_string(str(change.customer_id)) for change in changes)
        soql = f"SELECT Id, {field} FROM {SOBJECT} WHERE {field} IN ({values})"
        contacts, failed = await self._query_all(soql)
        if failed is not None:
            return [], fail_all(changes, failed)
        ids_by_customer: dict[str, list[str]] = {}
        for contact in contacts:
            record = self.mapping.record(contact)
            if record["id"]:
                ids_by_customer.setdefault(record["externalId"], []).append(record["id"])
        found: list[tuple[Change, str]] = []
        settled: Outcomes = {}
        for change in changes:
            ids = ids_by_customer.get(str(change.customer_id), [])
            found += [(change, crm_id) for crm_id in ids]
            if not ids:
                settled[id(change)] = Delivered(None)  # no such Contact: gone already
        return found, settled

    async def _query_all(self, soql: str) -> tuple[list[dict[str, Any]], Failed | None]:
        """Every record a query finds (following `nextRecordsUrl`), or why not."""
        records: list[dict[str, Any]] = []
        answer = await self.client.query(soql)
        while True:
            if not answer.ok or not isinstance(answer.body, dict):
                return [], self.answer_failure(answer)
            found = answer.body.get("records")
            records += [r for r in found or [] if isinstance(r, dict)]
            following = answer.body.get("nextRecordsUrl")
            if answer.body.get("done", True) or not isinstance(following, str):
                return records, None
            answer = await self.client.query_more(following)

    async def _delete_ids(self, targets: list[tuple[Change, str]]) -> Outcomes:
        answer = await self.client.delete([crm_id for _, crm_id in targets])
        if not answer.ok:
            return self._whole([change for change, _ in targets], answer)
        results = self._results(answer, len(targets))
        if results is None:
            return fail_all((change for change, _ in targets), self._no_result(answer))
        outcomes: Outcomes = {}
        for (change, _), result in zip(targets, results, strict=True):
            error = record_error(result)
            if error is None or error.code in GONE:
                # Deleted, or deleted already: either way it is gone, as asked.
                outcomes.setdefault(id(change), Delivered(None))
            else:
                detail = self.client.redact(error.detail)
                outcomes[id(change)] = Failed(detail, error.status, whole_call=False)
        return outcomes

    # -- the probe ----------------------------------------------------------------------

    async def probe(self) -> HoldReason | None:
        """A one-record query: None when Salesforce takes calls, else why not. While the
        API limit holds, no call is made until it lapses."""
        if self.quota.left() > 0:
            return HoldReason(HoldKind.RATE_LIMITED, self.quota.detail)
        try:
            answer = await self.client.query(f"SELECT Id FROM {SOBJECT} LIMIT 1")
        except CrmUnreachable as exc:
            return HoldReason(exc.kind, self.client.redact(f"Salesforce unreachable: {exc}"))
        except TokenRefused as refused:
            failed = self.token_failure(refused)
            return HoldReason(hold_kind(failed.status) or HoldKind.CRM_ERROR, failed.error)
        if answer.ok:
            return None
        failed = self.answer_failure(answer)
        return HoldReason(hold_kind(failed.status) or HoldKind.CRM_ERROR, failed.error)


class SalesforceRecords:
    """Salesforce's Contacts as reconciliation's neutral records (`reconciliation.records`):
    SOQL through `/query` ordered by Id, its pages followed by `nextRecordsUrl`; a query by
    Id or by the external id to confirm a finding."""

    fields: tuple[str, ...] = COMPARED_FIELDS

    def __init__(self, connector: SalesforceConnector) -> None:
        self._connector = connector
        self._client = connector.client
        self._mapping = connector.mapping

    def expected(self, customer: Customer) -> dict[str, Any]:
        return self._mapping.expected(customer)

    async def _read(self, call: Callable[[], Awaitable[SalesforceAnswer]]) -> dict[str, Any]:
        """The body of a query's page, else `CrmReadFailed`."""
        if self._connector.quota.left() > 0:
            raise CrmReadFailed(f"Salesforce cannot be read: {self._connector.quota.detail}")
        try:
            answer = await call()
        except CrmUnreachable as exc:
            raise CrmReadFailed(
                self._client.redact(f"Salesforce cannot be read: Salesforce unreachable: {exc}")
            ) from None
        except TokenRefused as refused:
            failed = self._connector.token_failure(refused)
            raise CrmReadFailed(f"Salesforce cannot be read: {failed.error}") from None
        if not answer.ok or not isinstance(answer.body, dict):
            failed = self._connector.answer_failure(answer)
            raise CrmReadFailed(f"Salesforce cannot be read: {failed.error}")
        return answer.body

    def _select(self) -> str:
        return f"SELECT Id, {', '.join(self._mapping.names())} FROM {SOBJECT}"

    def _records(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        found = body.get("records")
        return [self._mapping.record(r) for r in found or [] if isinstance(r, dict)]

    async def page(self, cursor: str | None, limit: int) -> RecordPage:
        if cursor is None:
            soql = f"{self._select()} ORDER BY Id"
            body = await self._read(lambda: self._client.query(soql, limit))
        else:
            locator = cursor
            body = await self._read(lambda: self._client.query_more(locator))
        records = self._records(body)
        following = body.get("nextRecordsUrl")
        more = not body.get("done", True) and isinstance(following, str) and records
        return RecordPage(records, following if more else None)

    async def _where(self, field: str, value: str) -> list[dict[str, Any]]:
        soql = f"{self._select()} WHERE {field} = {soql_string(value)}"
        return self._records(await self._read(lambda: self._client.query(soql)))

    async def get(self, crm_id: str) -> dict[str, Any] | None:
        found = await self._where("Id", crm_id)
        return found[0] if found else None

    async def find(self, external_id: str) -> list[dict[str, Any]]:
        return await self._where(self._mapping.external_id_field, external_id)
