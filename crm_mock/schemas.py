"""The CRM's own wire model (written separately from the customer service's, on purpose)."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints
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
    """The body of `POST` and `PUT /api/crm/customers` (PUT replaces every field), and each
    input of `POST /api/crm/customers/batch`."""

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


# --- batches ---------------------------------------------------------------------------------

MAX_BATCH_SIZE = 100


def _an_object(value: Any) -> dict[str, Any]:
    # Only the shape is checked here: an object that is not a valid CrmCustomerRequest is
    # that input's own error (a 422 in `errors`), not the batch's.
    if not isinstance(value, dict):
        raise ValueError("an input must be an object")
    return value


# Documented as a CrmCustomerRequest; validated as one input by input by the endpoint.
BatchInput = Annotated[
    dict[str, Any], PlainValidator(_an_object, json_schema_input_type=CrmCustomerRequest)
]
CrmId = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class CrmCustomerBatchRequest(CamelModel):
    """The body of `POST /api/crm/customers/batch`: 1 to 100 records to upsert by externalId."""

    inputs: Annotated[list[BatchInput], Field(min_length=1, max_length=MAX_BATCH_SIZE)]


class CrmBatchError(CamelModel):
    """One input of a batch that was not applied: its position in `inputs`, its externalId
    (null when it has none that is a string), the status a call of its own would have got,
    and why."""

    index: int
    external_id: str | None
    status: int
    detail: str


class CrmCustomerBatchResults(CamelModel):
    """Every input applied: the records as they now are, in the order of the inputs."""

    results: list[CrmCustomer]


class CrmCustomerBatchPartial(CamelModel):
    """Some inputs failed (207): the records applied, in input order, and the failures."""

    results: list[CrmCustomer]
    errors: list[CrmBatchError]


class CrmCustomerBatchDeleteRequest(CamelModel):
    """The body of `POST /api/crm/customers/batch/delete`: 1 to 100 CRM ids."""

    ids: Annotated[list[CrmId], Field(min_length=1, max_length=MAX_BATCH_SIZE)]


class CrmBatchDeleteError(CamelModel):
    """One id of a batch delete that was not applied: its position in `ids`, the id, the
    externalId of its record (null when there is no such record), its status and why."""

    index: int
    id: str
    external_id: str | None
    status: int
    detail: str


class CrmCustomerBatchDeleted(CamelModel):
    """Every id settled: those deleted and those no record has, each in the order given."""

    deleted: list[str]
    not_found: list[str]


class CrmCustomerBatchDeletePartial(CamelModel):
    """Some ids failed (207): those deleted, those not found, and the failures."""

    deleted: list[str]
    not_found: list[str]
    errors: list[CrmBatchDeleteError]


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


class CallInFlight(CamelModel):
    method: str
    path: str
    count: int


class CallsRead(CamelModel):
    """The calls the CRM is answering now (received, not yet answered), by method and path."""

    in_flight: int
    calls: list[CallInFlight]


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
