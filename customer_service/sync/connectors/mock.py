"""The CRM mock's own API (README, "The CRM mock"): the seed's way out, now batch-capable.

With `CRM_BATCH_SIZE` 1 (the default) each change is its own call, as the seed made it:

- CREATE: POST with the row's Idempotency-Key. A 409 means the CRM has the record
  already (a create whose answer was lost, or made by someone else): its id is adopted
  and our state written over it with a PUT, so there is never a second record.
- UPDATE: PUT to the known CRM id; with no id yet, or a 404 (the CRM lost it), the
  record is (re)created as for CREATE.
- DELETE: DELETE the known CRM id, or every record carrying our externalId when the id
  was never learnt; a 404 means it is gone already, which is what was asked.

With a larger `CRM_BATCH_SIZE` (at most 100, the endpoint's maximum) the creates and
updates of a batch go in one `POST /api/crm/customers/batch` (an upsert by externalId:
a create repeated after a lost answer finds its record, no second one), and the deletes
with a known CRM id in one `POST .../batch/delete`; a 207 names the records that failed,
each answered on its own. A delete whose CRM id was never learnt goes alone, as above.

A create answered 2xx with no record id (or with a body that is not JSON) is a failure
whose `lastError` says so, not a success: retried with the same key.
"""

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any

from customer_service.config import Settings
from customer_service.crm.client import CrmAnswer, CrmClient, CrmUnreachable
from customer_service.crm.mapper import to_mock_record
from customer_service.crm.throttle import CallThrottle
from customer_service.sync.connector import CallObserver, Change
from customer_service.sync.hold import HoldKind, HoldReason, hold_kind
from customer_service.sync.models import Operation
from customer_service.sync.outcome import Delivered, Failed, Outcome

log = logging.getLogger(__name__)

# The batch endpoints' maximum records per call.
MAX_BATCH = 100
# Calls in flight for live deliveries: each a request the CRM works on.
CALLS_IN_FLIGHT = 64


def _failed(answer: CrmAnswer) -> Failed:
    return Failed(answer.describe(), answer.status, answer.retry_after)


def _crm_id(answer: CrmAnswer) -> str | None:
    if isinstance(answer.body, dict) and answer.body.get("id") is not None:
        return str(answer.body["id"])
    return None


def _record_errors(body: dict[str, Any]) -> dict[int, Failed]:
    """The records a 207 names as failed, by their index in the call: each one's own
    failure (`whole_call` False: it says nothing of the CRM as a whole)."""
    errors: dict[int, Failed] = {}
    for error in body.get("errors") or []:
        if isinstance(error, dict) and isinstance(error.get("index"), int):
            status = error.get("status") if isinstance(error.get("status"), int) else None
            detail = error.get("detail") or "refused in a batch"
            errors[error["index"]] = Failed(
                f"CRM answered {status}: {detail}", status, whole_call=False
            )
    return errors


def _batch_key() -> str:
    """The Idempotency-Key of a batch call: its own, new for each call. The batch upsert is
    idempotent by externalId already; a key repeated by a later call would get the first
    answer again, a 207 failing the same record on every retry. (The client's own resend
    after a dropped connection repeats the call's key.)"""
    return f"batch:{uuid.uuid4()}"


class MockConnector:
    confirms_later = False

    def __init__(
        self,
        settings: Settings,
        on_call: CallObserver | None = None,
        throttle: CallThrottle | None = None,
    ) -> None:
        throttle = throttle or CallThrottle(settings.crm_max_requests_per_second)
        self.client = CrmClient(settings, on_call=on_call, throttle=throttle)
        self.batch_size = min(settings.crm_batch_size or 1, MAX_BATCH)
        self.calls_in_flight = CALLS_IN_FLIGHT

    async def start(self, serving: bool) -> None:
        del serving  # the client opens its session on the first call

    async def close(self) -> None:
        await self.client.aclose()

    def reader(self) -> CrmClient:
        return self.client

    async def send(self, changes: Sequence[Change]) -> list[Outcome]:
        """One call per change with a batch size of 1, else the batch endpoints."""
        if self.batch_size == 1:
            return list(await asyncio.gather(*(self._send_one(change) for change in changes)))
        upserts = [c for c in changes if c.request.operation != Operation.DELETE]
        deletes = [c for c in changes if c.request.operation == Operation.DELETE and c.crm_id]
        alone = [c for c in changes if c.request.operation == Operation.DELETE and not c.crm_id]
        parts = [self._alone(change) for change in alone]
        if upserts:
            parts.append(self._guarded(upserts, self._upsert_batch(upserts)))
        if deletes:
            parts.append(self._guarded(deletes, self._delete_batch(deletes)))
        outcomes: dict[int, Outcome] = {}
        for found in await asyncio.gather(*parts):
            outcomes.update(found)
        return [outcomes[id(change)] for change in changes]

    async def _alone(self, change: Change) -> dict[int, Outcome]:
        return {id(change): await self._send_one(change)}

    async def _guarded(
        self, changes: list[Change], call: Awaitable[dict[int, Outcome]]
    ) -> dict[int, Outcome]:
        """A batch call's outcomes by change; whatever the call raises fails them all."""
        try:
            result: dict[int, Outcome] = await call
            return result
        except CrmUnreachable as exc:
            failed = Failed(f"CRM unreachable: {exc}", unanswered=exc.kind)
        except Exception as exc:
            log.warning("CRM batch call raised", exc_info=True)
            failed = Failed(f"CRM call failed: {type(exc).__name__}: {exc}".rstrip(": "))
        return {id(change): failed for change in changes}

    async def _upsert_batch(self, changes: list[Change]) -> dict[int, Outcome]:
        inputs = [to_mock_record(change.request.payload or {}) for change in changes]
        answer = await self.client.upsert_batch(inputs, _batch_key())
        if answer.status not in (200, 207) or not isinstance(answer.body, dict):
            failed = _failed(answer)
            return {id(change): failed for change in changes}
        by_external: dict[str, str] = {}
        for record in answer.body.get("results") or []:
            if isinstance(record, dict) and record.get("id") is not None:
                by_external[str(record.get("externalId"))] = str(record["id"])
        errors = _record_errors(answer.body)
        outcomes: dict[int, Outcome] = {}
        for index, change in enumerate(changes):
            crm_id = by_external.get(str(change.customer_id))
            if index in errors:
                outcomes[id(change)] = errors[index]
            elif crm_id is not None:
                outcomes[id(change)] = Delivered(crm_id)
            else:
                outcomes[id(change)] = Failed(
                    f"{answer.describe()} without a record for this customer", answer.status
                )
        return outcomes

    async def _delete_batch(self, changes: list[Change]) -> dict[int, Outcome]:
        ids = [str(change.crm_id) for change in changes]
        answer = await self.client.delete_batch(ids, _batch_key())
        if answer.status not in (200, 207) or not isinstance(answer.body, dict):
            failed = _failed(answer)
            return {id(change): failed for change in changes}
        errors = _record_errors(answer.body)
        # Deleted or not found: either way the record is gone, which is what was asked.
        return {id(c): errors.get(i, Delivered(None)) for i, c in enumerate(changes)}

    async def _send_one(self, change: Change) -> Outcome:
        """Deliver one change; never raises: every error of a call becomes `Failed`."""
        row, crm_id = change.request, change.crm_id
        try:
            if row.operation == Operation.DELETE:
                return await self._delete(change)
            assert row.payload is not None
            record = to_mock_record(row.payload)
            if row.operation == Operation.UPDATE and crm_id is not None:
                answer = await self.client.replace(crm_id, record, row.idempotency_key)
                if answer.status != 404:
                    return Delivered(crm_id) if answer.ok else _failed(answer)
                return await self._create(record, f"{row.idempotency_key}:recreate")
            return await self._create(record, row.idempotency_key)
        except CrmUnreachable as exc:
            return Failed(f"CRM unreachable: {exc}", unanswered=exc.kind)
        except Exception as exc:
            # Whatever else a call raises is CRM trouble too: the row must be recorded
            # failed, not left to an exception that skips the bookkeeping. Cancellation is
            # not an Exception and still propagates.
            log.warning("CRM call for request %s raised", row.id, exc_info=True)
            return Failed(f"CRM call failed: {type(exc).__name__}: {exc}".rstrip(": "))

    async def _create(self, payload: dict[str, Any], key: str) -> Outcome:
        answer = await self.client.create(payload, key)
        if answer.ok and _crm_id(answer):
            return Delivered(_crm_id(answer))
        if answer.ok:
            # A success that names no record is not one: we could never update or delete
            # what it made. Retried (same key: no second record if one was made).
            if answer.not_json is not None:
                return Failed(answer.describe(), answer.status)
            return Failed(f"{answer.describe()} without a record id", answer.status)
        if answer.status != 409 or _crm_id(answer) is None:
            return _failed(answer)
        existing = _crm_id(answer)
        assert existing is not None
        adopted = await self.client.replace(existing, payload, f"{key}:adopt")
        return Delivered(existing) if adopted.ok else _failed(adopted)

    async def _delete(self, change: Change) -> Outcome:
        row = change.request
        if change.crm_id is None:
            found = await self.client.find(str(row.customer_id))
            if not found.ok:
                return _failed(found)
            items = found.body.get("items", []) if isinstance(found.body, dict) else []
            ids = [str(item["id"]) for item in items]
        else:
            ids = [change.crm_id]
        for index, target in enumerate(ids):
            answer = await self.client.remove(target, f"{row.idempotency_key}:{index}")
            if not answer.ok and answer.status != 404:
                return _failed(answer)
        return Delivered(None)

    async def probe(self) -> HoldReason | None:
        """Does the CRM take calls now? None when it does, else why not."""
        answer = await self.client.probe()
        if isinstance(answer, CrmUnreachable):
            return HoldReason(answer.kind, f"CRM unreachable: {answer}")
        if answer.ok:
            return None
        # A 404 or 400 to a plain read is the CRM (or CRM_BASE_URL) broken as a whole too.
        return HoldReason(hold_kind(answer.status) or HoldKind.CRM_ERROR, answer.describe())
