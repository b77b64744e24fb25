"""Pure comparison of CRM records with our customers: what counts as drift, and of which kind.

A finding is one of:
- MISSING: a customer with no undelivered request has no CRM record with its externalId;
- EXTRA: a CRM record whose externalId names no customer of ours (and no DELETE on its way);
- DIFFERENT: a customer with no undelivered request whose CRM record holds other values
  than the connector makes of it (`records.CrmRecords.expected`: the mock's record by
  default, `CRM_FIELDS`; HubSpot's in neutral names, each address part on its own).

A customer with undelivered requests is never drift: its queue is on the way to fix it.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from customer_service.schemas import INT32_MAX

# The fields of CrmCustomerRequest, as the CRM names them: what must be equal.
CRM_FIELDS = ("externalId", "firstName", "lastName", "email", "phone", "address")


class DriftKind(StrEnum):
    MISSING = "missing"
    EXTRA = "extra"
    DIFFERENT = "different"


@dataclass(frozen=True)
class Local:
    """What we hold for one customer id: the CRM body it should have (None when there is
    no such customer) and whether requests of that id wait in the outbox."""

    expected: Mapping[str, Any] | None
    busy: bool


@dataclass(frozen=True)
class Finding:
    kind: DriftKind
    external_id: str
    # Our customer id when the externalId is one; the CRM record's id when there is one.
    customer_id: int | None
    crm_id: str | None
    fields: tuple[str, ...] = ()


def customer_id_of(external_id: str) -> int | None:
    """The customer id an externalId names, or None when it cannot be one of ours."""
    if (
        not external_id.isascii()
        or not external_id.isdigit()
        or external_id != str(int(external_id))
    ):
        return None
    value = int(external_id)
    return value if 1 <= value <= INT32_MAX else None


def differing_fields(
    expected: Mapping[str, Any], record: Mapping[str, Any], fields: Sequence[str] = CRM_FIELDS
) -> tuple[str, ...]:
    """The CRM fields whose values differ (an absent phone equals a null one)."""
    return tuple(f for f in fields if (expected.get(f) or None) != (record.get(f) or None))


def classify_record(
    record: Mapping[str, Any], local: Local | None, fields: Sequence[str] = CRM_FIELDS
) -> Finding | None:
    """The drift one CRM record shows against what we hold for its externalId, if any."""
    external_id = str(record.get("externalId", ""))
    crm_id = str(record["id"]) if record.get("id") is not None else None
    customer_id = customer_id_of(external_id)
    if local is not None and local.busy:
        return None
    if local is None or local.expected is None:
        return Finding(DriftKind.EXTRA, external_id, customer_id, crm_id)
    differing = differing_fields(local.expected, record, fields)
    if differing:
        return Finding(DriftKind.DIFFERENT, external_id, customer_id, crm_id, differing)
    return None


def classify_page(
    records: Iterable[Mapping[str, Any]],
    local: Mapping[int, Local],
    fields: Sequence[str] = CRM_FIELDS,
) -> list[Finding]:
    """The drift shown by one page of CRM records; `local` holds our side of every
    customer id the page names (absent: no customer and nothing queued)."""
    findings = []
    for record in records:
        customer_id = customer_id_of(str(record.get("externalId", "")))
        ours = None if customer_id is None else local.get(customer_id)
        found = classify_record(record, ours, fields)
        if found is not None:
            findings.append(found)
    return findings


class IdBitmap:
    """A set of positive ids in one bit each: the customer ids seen in the CRM.

    It is what lets the second pass (over our customers) tell which have no CRM record
    without keeping the CRM's records: a million customers cost 125 KB.
    """

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, value: int) -> None:
        index = value >> 3
        if index >= len(self._bits):
            self._bits.extend(bytes(index + 1 - len(self._bits)))
        self._bits[index] |= 1 << (value & 7)

    def __contains__(self, value: int) -> bool:
        index = value >> 3
        return index < len(self._bits) and bool(self._bits[index] & (1 << (value & 7)))
