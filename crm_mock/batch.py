"""The rules of the batch endpoints, kept out of the routes: which inputs of a batch are
applied, which fail and why, and which records a batch call's request log names.

Each input is judged in order, as a call of its own would be: the fault switch's `errorRate`
draws for it (its `statusCode`), then it must be a valid `CrmCustomerRequest` (422), then its
externalId (for a delete: its id) must not be one an earlier input of the same call names
(409 for the later one, whatever became of the earlier: a conflict within the call, which
the client resolves by sending it again in another call; the customer service retries a
409). Only the inputs that pass are applied. `down`, `latencyMs`, `rateLimitPerSecond`,
auth and idempotency act on the call as a whole, in the gateway.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import ValidationError

from crm_mock.faults import FaultSettings, decide_fault
from crm_mock.problems import field_errors
from crm_mock.schemas import (
    CrmCustomerBatchDeleteRequest,
    CrmCustomerBatchRequest,
    CrmCustomerRequest,
)

# A record's own status in the request log, as a call of its own would have been answered.
CREATED, REPLACED, DELETED, NOT_FOUND = 201, 200, 204, 404
INVALID, DUPLICATE = 422, 409


class BatchKind(Enum):
    UPSERT = "upsert"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Refusal:
    """An input that is not applied: where it is in the batch, its status and why."""

    index: int
    external_id: str | None  # None for a delete's id: the route looks its record up
    status: int
    detail: str


@dataclass(frozen=True, slots=True)
class UpsertPlan:
    accepted: list[tuple[int, CrmCustomerRequest]]
    refused: list[Refusal]


@dataclass(frozen=True, slots=True)
class DeletePlan:
    accepted: list[tuple[int, str]]
    refused: list[Refusal]


def plan_upserts(
    inputs: Sequence[dict[str, Any]], faults: FaultSettings, draw: Callable[[], float]
) -> UpsertPlan:
    """Judge each input (module doc); `draw` gives one uniform number in [0, 1) per input."""
    accepted: list[tuple[int, CrmCustomerRequest]] = []
    refused: list[Refusal] = []
    named: dict[str, int] = {}
    for index, raw in enumerate(inputs):
        fault = decide_fault(faults, draw())
        request: CrmCustomerRequest | None = None
        invalid = ""
        try:
            request = CrmCustomerRequest.model_validate(raw)
        except ValidationError as error:
            invalid = invalid_detail(error)
        name = request.external_id if request is not None else stated_external_id(raw)
        first = named.setdefault(name, index) if name is not None else index
        if fault is not None:
            detail = f"fault injected: {fault.reason}"
            refused.append(Refusal(index, name, fault.status_code, detail))
        elif request is None:
            refused.append(Refusal(index, name, INVALID, invalid))
        elif first != index:
            detail = f"externalId {name} is named by input {first} of this batch already"
            refused.append(Refusal(index, name, DUPLICATE, detail))
        else:
            accepted.append((index, request))
    return UpsertPlan(accepted, refused)


def plan_deletes(
    ids: Sequence[str], faults: FaultSettings, draw: Callable[[], float]
) -> DeletePlan:
    """Judge each id as `plan_upserts` judges an input (its id is always valid)."""
    accepted: list[tuple[int, str]] = []
    refused: list[Refusal] = []
    named: dict[str, int] = {}
    for index, crm_id in enumerate(ids):
        fault = decide_fault(faults, draw())
        first = named.setdefault(crm_id, index)
        if fault is not None:
            detail = f"fault injected: {fault.reason}"
            refused.append(Refusal(index, None, fault.status_code, detail))
        elif first != index:
            detail = f"id {crm_id} is named by input {first} of this batch already"
            refused.append(Refusal(index, None, DUPLICATE, detail))
        else:
            accepted.append((index, crm_id))
    return DeletePlan(accepted, refused)


def stated_external_id(raw: Any) -> str | None:
    """The externalId an input names, if it names one that is a string."""
    value = raw.get("externalId") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def invalid_detail(error: ValidationError) -> str:
    """The detail of an input's 422: every field found wrong, with why."""
    problems = "; ".join(f"{e.field}: {e.message}" for e in field_errors(error.errors()))
    return f"invalid input: {problems}"


@dataclass(frozen=True, slots=True)
class Subject:
    """What one request-log entry names: an external id and a body."""

    external_id: str | None
    body: Any


def upsert_subjects(body: Any) -> list[Subject] | None:
    """One subject per input of a well-formed batch upsert body (the input itself), or None
    when the body is not one (the call is then logged as one entry, as any call)."""
    try:
        CrmCustomerBatchRequest.model_validate(body)
    except ValidationError:
        return None
    return [Subject(stated_external_id(raw), raw) for raw in body["inputs"]]


def delete_ids(body: Any) -> list[str] | None:
    """The ids of a well-formed batch delete body, or None when it is not one."""
    try:
        return CrmCustomerBatchDeleteRequest.model_validate(body).ids
    except ValidationError:
        return None


def delete_subjects(ids: Sequence[str], external_ids: dict[str, str]) -> list[Subject]:
    """One subject per id: the externalId of its record (if any) and `{"id": ...}`."""
    return [Subject(external_ids.get(crm_id), {"id": crm_id}) for crm_id in ids]
