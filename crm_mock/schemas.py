"""The CRM's own wire model (written separately from the customer service's, on purpose)."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]
# Deliberately loose: a third party that refused addresses its client accepts would turn
# good customers into dead requests. One "@" with something on each side is enough.
Email = Annotated[
    str, StringConstraints(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
]


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


class CrmCustomerRequest(CamelModel):
    """The body of `POST` and `PUT /api/crm/customers` (PUT replaces every field)."""

    external_id: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    first_name: Name
    last_name: Name
    email: Email
    phone: Annotated[str | None, Field(max_length=100)] = None
    address: Annotated[str, Field(max_length=2000)] = ""


class CrmCustomer(CamelModel):
    """A CRM record: the CRM's own id, the request's fields and the CRM's timestamps."""

    id: str
    external_id: str
    first_name: str
    last_name: str
    email: str
    phone: str | None
    address: str
    created_at: datetime
    updated_at: datetime


class CrmCustomerPage(CamelModel):
    items: list[CrmCustomer]
    total: int


class RequestLogEntryRead(CamelModel):
    """One request the CRM received on `/api/crm/customers*`, with the status it answered."""

    method: str
    path: str
    status: int
    external_id: str | None
    idempotency_key: str | None
    body: Any
    received_at: datetime


class RequestLogPage(CamelModel):
    items: list[RequestLogEntryRead]
    total: int


class HealthRead(BaseModel):
    status: str


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document; `errors` only on 422."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
