"""How reconciliation reads the CRM's records: through the connector, in neutral records.

A connector's `reader()` gives a `CrmRecords` (or, for the CRM mock's own API, its
`CrmClient`, which `records_of` wraps in `MockRecords`). A neutral record is a dict with
the CRM's `id`, the `externalId` (our customer id as the CRM keeps it) and the fields
`fields` names; `expected(customer)` is what those must hold for a customer. Pages follow
an opaque cursor: the mock's API an offset, HubSpot's the `after` of its contacts list.
Every read that fails raises `CrmReadFailed` (the API answers it 503; the command exits 1).
"""

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from customer_service.crm.client import CrmAnswer, CrmClient, CrmUnreachable
from customer_service.crm.mapper import CustomerMapper
from customer_service.customers.models import Customer
from customer_service.errors import DomainError
from customer_service.reconciliation.compare import CRM_FIELDS


class CrmReadFailed(DomainError):
    status = 503
    title = "CRM unavailable"


@dataclass(frozen=True)
class RecordPage:
    records: list[dict[str, Any]]
    # The next page's cursor; None when this was the last.
    cursor: str | None


class CrmRecords(Protocol):
    # The neutral fields compared, `externalId` first.
    fields: tuple[str, ...]

    def expected(self, customer: Customer) -> dict[str, Any]:
        """The neutral record a customer's CRM record must equal (but for `id`)."""

    async def page(self, cursor: str | None, limit: int) -> RecordPage:
        """Up to `limit` records from `cursor` (None: the first page)."""

    async def get(self, crm_id: str) -> dict[str, Any] | None:
        """The record with this CRM id, None when there is none."""

    async def find(self, external_id: str) -> list[dict[str, Any]]:
        """The records carrying this externalId."""


class MockRecords:
    """The CRM mock's own API (`GET /api/crm/customers`, offset pages) as `CrmRecords`."""

    fields: tuple[str, ...] = CRM_FIELDS

    def __init__(self, client: CrmClient) -> None:
        self._client = client

    @staticmethod
    def expected(customer: Customer) -> dict[str, Any]:
        return CustomerMapper.to_crm(customer).to_json()

    async def _read(self, call: Awaitable[CrmAnswer]) -> CrmAnswer:
        try:
            answer = await call
        except CrmUnreachable as exc:
            raise CrmReadFailed(f"the CRM cannot be read: {exc}") from exc
        if not answer.ok and answer.status != 404:
            raise CrmReadFailed(f"the CRM cannot be read: {answer.describe()}")
        return answer

    async def page(self, cursor: str | None, limit: int) -> RecordPage:
        offset = int(cursor or 0)
        answer = await self._read(self._client.page(limit, offset))
        body = answer.body if answer.ok and isinstance(answer.body, dict) else {}
        records: list[dict[str, Any]] = body.get("items", [])
        return RecordPage(records, str(offset + len(records)) if records else None)

    async def get(self, crm_id: str) -> dict[str, Any] | None:
        answer = await self._read(self._client.get(crm_id))
        if answer.status == 404 or not isinstance(answer.body, dict):
            return None
        return answer.body

    async def find(self, external_id: str) -> list[dict[str, Any]]:
        answer = await self._read(self._client.find(external_id))
        if not answer.ok or not isinstance(answer.body, dict):
            return []
        items: list[dict[str, Any]] = answer.body.get("items", [])
        return items


def records_of(reader: "CrmClient | CrmRecords") -> CrmRecords:
    """What a connector's `reader()` gives, as `CrmRecords`."""
    return MockRecords(reader) if isinstance(reader, CrmClient) else reader
