"""The customer events of the Kafka alternative as the CRM reads them (SPEC section 5),
and the status events it answers with."""

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from crm_mock.schemas import CrmCustomerRequest


class InvalidEvent(Exception):
    """The message is not a customer event this CRM can apply."""


class CustomerEvent(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    event_id: str = Field(min_length=1, max_length=255)
    event_type: Literal["CREATE", "UPDATE", "DELETE"]
    customer_id: int
    version: int = Field(ge=0)
    occurred_at: str
    customer: CrmCustomerRequest | None = None

    @model_validator(mode="after")
    def _check_customer(self) -> "CustomerEvent":
        if self.event_type != "DELETE" and self.customer is None:
            raise ValueError(f"a {self.event_type} event needs its customer")
        if self.customer is not None and self.customer.external_id != str(self.customer_id):
            raise ValueError("customer.externalId is not the event's customerId")
        return self

    @property
    def external_id(self) -> str:
        return str(self.customer_id)

    @property
    def rank(self) -> int:
        """Order of a customer's events: by version, and a DELETE (which carries the
        version it deleted) after the write of that same version."""
        return self.version * 2 + (1 if self.event_type == "DELETE" else 0)


def parse_event(raw: bytes | None) -> CustomerEvent:
    try:
        return CustomerEvent.model_validate_json(raw or b"")
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "event"
        raise InvalidEvent(f"invalid event: {where}: {first['msg']}") from None


def external_id_of(key: bytes | None) -> str | None:
    """The customer a message is keyed by, if the key is one."""
    try:
        text = (key or b"").decode()
    except UnicodeDecodeError:
        return None
    return text if text.isdigit() else None


def status_event(
    event_id: str,
    customer_id: int,
    version: int | None,
    status: str,
    crm_id: str | None,
    error: str | None,
) -> bytes:
    body = {
        "eventId": event_id,
        "customerId": customer_id,
        "version": version,
        "status": status,
        "crmId": crm_id,
        "error": error,
    }
    return json.dumps(body, separators=(",", ":")).encode()
