"""Delivery over HTTP: one outbox request to the CRM calls it needs, and what they mean.

- CREATE: POST with the row's Idempotency-Key. A 409 means the CRM has the record
  already (a create whose answer was lost, or made by someone else): its id is adopted
  and our state written over it with a PUT, so there is never a second record.
- UPDATE: PUT to the known CRM id; with no id yet, or a 404 (the CRM lost it), the
  record is (re)created as for CREATE.
- DELETE: DELETE the known CRM id, or every record carrying our externalId when the id
  was never learnt; a 404 means it is gone already, which is what was asked.

A create answered 2xx with no record id (or with a body that is not JSON) is a failure
whose `lastError` says so, not a success: retried with the same key.
"""

import logging
from typing import Any

from customer_service.crm.client import CrmAnswer, CrmClient, CrmUnreachable
from customer_service.sync.hold import HoldKind, HoldReason, hold_kind
from customer_service.sync.models import FailedRequest, Operation
from customer_service.sync.outcome import Delivered, Failed, Outcome

log = logging.getLogger(__name__)


def _failed(answer: CrmAnswer) -> Failed:
    return Failed(answer.describe(), answer.status, answer.retry_after)


def _crm_id(answer: CrmAnswer) -> str | None:
    if isinstance(answer.body, dict) and answer.body.get("id") is not None:
        return str(answer.body["id"])
    return None


class HttpSender:
    def __init__(self, client: CrmClient) -> None:
        self._client = client

    async def send(self, row: FailedRequest, crm_id: str | None) -> Outcome:
        """Deliver `row` (its payload is the state to send); never raises: every error of
        a call becomes a `Failed` outcome that the deliverer records."""
        try:
            if row.operation == Operation.DELETE:
                return await self._delete(row, crm_id)
            assert row.payload is not None
            if row.operation == Operation.UPDATE and crm_id is not None:
                answer = await self._client.replace(crm_id, row.payload, row.idempotency_key)
                if answer.status != 404:
                    return Delivered(crm_id) if answer.ok else _failed(answer)
                return await self._create(row.payload, f"{row.idempotency_key}:recreate")
            return await self._create(row.payload, row.idempotency_key)
        except CrmUnreachable as exc:
            return Failed(f"CRM unreachable: {exc}", unanswered=exc.kind)
        except Exception as exc:
            # Whatever else a call raises (httpcore has leaked AttributeError when the CRM
            # process died mid-call) is CRM trouble too: the row must be recorded failed,
            # not left to an exception that skips the bookkeeping. Cancellation is not
            # an Exception and still propagates.
            log.warning("CRM call for request %s raised", row.id, exc_info=True)
            return Failed(f"CRM call failed: {type(exc).__name__}: {exc}".rstrip(": "))

    async def _create(self, payload: dict[str, Any], key: str) -> Outcome:
        answer = await self._client.create(payload, key)
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
        adopted = await self._client.replace(existing, payload, f"{key}:adopt")
        return Delivered(existing) if adopted.ok else _failed(adopted)

    async def _delete(self, row: FailedRequest, crm_id: str | None) -> Outcome:
        if crm_id is None:
            found = await self._client.find(str(row.customer_id))
            if not found.ok:
                return _failed(found)
            items = found.body.get("items", []) if isinstance(found.body, dict) else []
            ids = [str(item["id"]) for item in items]
        else:
            ids = [crm_id]
        for index, target in enumerate(ids):
            answer = await self._client.remove(target, f"{row.idempotency_key}:{index}")
            if not answer.ok and answer.status != 404:
                return _failed(answer)
        return Delivered(None)

    async def probe(self) -> HoldReason | None:
        """Does the CRM take calls now? None when it does, else why not."""
        answer = await self._client.probe()
        if isinstance(answer, CrmUnreachable):
            return HoldReason(answer.kind, f"CRM unreachable: {answer}")
        if answer.ok:
            return None
        # A 404 or 400 to a plain read is the CRM (or CRM_BASE_URL) broken as a whole too.
        return HoldReason(hold_kind(answer.status) or HoldKind.CRM_ERROR, answer.describe())
