"""The customer events as the sink reads them (SPEC section 5), the change each one asks of
the connector, and the status event it answers with (pure, no I/O).

An event carries the CRM mock's record (`customer`, its address one string) and, from
this service, `addressParts` (the address part by part). The change handed to the
connector is built as the outbox would have kept it: the customer's own fields
(`crm.mapper.snapshot`'s keys), so every connector maps it as in HTTP mode. An event
without `addressParts` (published before it existed) is handed over as the mock's record,
which each connector takes as a payload written before snapshots (HubSpot: the whole
address as the street).
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from customer_service.crm.mapper import ADDRESS_PARTS
from customer_service.sync.connector import Change
from customer_service.sync.models import Operation, QueuedRequest, RequestStatus

APPLIED = "applied"
DEAD = "dead"


class InvalidEvent(Exception):
    """The message is not a customer event the sink can deliver."""


class _Record(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    external_id: str = Field(min_length=1, max_length=255)
    first_name: str = Field(min_length=1)
    last_name: str = Field(min_length=1)
    email: str = Field(min_length=1)
    phone: str | None = None
    address: str = ""


class _Event(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    event_id: str = Field(min_length=1, max_length=255)
    event_type: Literal["CREATE", "UPDATE", "DELETE"]
    customer_id: int = Field(ge=1)
    version: int = Field(ge=0)
    occurred_at: datetime
    customer: _Record | None = None
    address_parts: dict[str, str | None] | None = None

    @model_validator(mode="after")
    def _check_customer(self) -> "_Event":
        if self.event_type != "DELETE" and self.customer is None:
            raise ValueError(f"a {self.event_type} event needs its customer")
        if self.customer is not None and self.customer.external_id != str(self.customer_id):
            raise ValueError("customer.externalId is not the event's customerId")
        return self


@dataclass(frozen=True)
class CustomerEvent:
    event_id: str
    operation: Operation
    customer_id: int
    version: int
    occurred_at: datetime
    # The change as an outbox row would carry it (None for a DELETE).
    payload: dict[str, Any] | None

    @property
    def record_delete(self) -> bool:
        """Reconciliation's DELETE of a CRM record no customer of ours has (version 0, as
        `sync.outbox.enqueue_record_delete` queues it): never stale, and aimed at the
        records the CRM holds under the id, not at a record the sink once learnt."""
        return self.operation == Operation.DELETE and self.version == 0

    @property
    def rank(self) -> int:
        """Order of a customer's events: by version, and a DELETE (which carries the version
        it deleted) after the write of that same version."""
        return rank_of(self.version, self.operation == Operation.DELETE)


def rank_of(version: int, delete: bool) -> int:
    return version * 2 + (1 if delete else 0)


def parse_event(raw: bytes | None) -> CustomerEvent:
    """The event in `raw`; `InvalidEvent` (one line saying what is wrong) when it is not one."""
    try:
        event = _Event.model_validate_json(raw or b"")
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "event"
        raise InvalidEvent(f"invalid event: {where}: {first['msg']}") from None
    occurred = event.occurred_at
    if occurred.tzinfo is None:
        occurred = occurred.replace(tzinfo=UTC)
    return CustomerEvent(
        event_id=event.event_id,
        operation=Operation(event.event_type),
        customer_id=event.customer_id,
        version=event.version,
        occurred_at=occurred,
        payload=_payload(event),
    )


def _payload(event: _Event) -> dict[str, Any] | None:
    record = event.customer
    if record is None:
        return None
    if event.address_parts is None:
        return record.model_dump(by_alias=True)  # the mock's record, as legacy rows are
    fields: dict[str, Any] = {
        "id": event.customer_id,
        "firstName": record.first_name,
        "lastName": record.last_name,
        "email": record.email,
        "phone": record.phone,
    }
    for part in ADDRESS_PARTS:
        fields[f"address.{part}"] = event.address_parts.get(part)
    return fields


def change_of(event: CustomerEvent, offset: int, crm_id: str | None) -> Change:
    """The change the connector sends for `event` (the eventId is its Idempotency-Key);
    `crm_id`: the customer's CRM id as the sink last learnt it, if it did."""
    row = QueuedRequest(
        id=offset,
        customer_id=event.customer_id,
        operation=str(event.operation),
        status=RequestStatus.PENDING,
        attempts=0,
        last_error=None,
        next_attempt_at=event.occurred_at,
        version=event.version,
        payload=event.payload,
        crm_id=crm_id,
        idempotency_key=event.event_id,
        created_at=event.occurred_at,
        updated_at=event.occurred_at,
    )
    return Change(row, crm_id)


def status_event(
    event: CustomerEvent, status: str, crm_id: str | None, error: str | None = None
) -> bytes:
    """SPEC section 5's status event: `{"eventId", "customerId", "version", "status",
    "crmId", "error"}`."""
    body = {
        "eventId": event.event_id,
        "customerId": event.customer_id,
        "version": event.version,
        "status": status,
        "crmId": crm_id,
        "error": error,
    }
    return json.dumps(body, separators=(",", ":")).encode()
