"""The CRM mock's endpoints (README: "The CRM mock"). Thin: parse, call the store, map the result.

Auth, faults, idempotency and the request log of `/api/crm/customers*` are not here but in
`gateway.CustomerCallsGateway`, which wraps every such call.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse

from crm_mock import batch, ledger, store
from crm_mock.deps import RuntimeDep, SessionDep, report_record_statuses
from crm_mock.faults import FaultSettings, FaultUpdate, apply_fault_update
from crm_mock.schemas import (
    CallInFlight,
    CallsRead,
    CrmBatchDeleteError,
    CrmBatchError,
    CrmCustomer,
    CrmCustomerBatchDeleted,
    CrmCustomerBatchDeletePartial,
    CrmCustomerBatchDeleteRequest,
    CrmCustomerBatchPartial,
    CrmCustomerBatchRequest,
    CrmCustomerBatchResults,
    CrmCustomerPage,
    CrmCustomerRequest,
    HealthRead,
    Problem,
    RequestLogEntryRead,
    RequestLogPage,
)

CUSTOMERS_PATH = "/api/crm/customers"
BATCH_PATH = f"{CUSTOMERS_PATH}/batch"
BATCH_DELETE_PATH = f"{BATCH_PATH}/delete"
MAX_OFFSET = 2**31 - 1

_PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {**_PROBLEM, "description": "No such record"}}
_INVALID: dict[int | str, dict[str, Any]] = {422: {**_PROBLEM, "description": "Invalid input"}}

customers_router = APIRouter(
    prefix=CUSTOMERS_PATH,
    tags=["customers"],
    responses={
        401: {**_PROBLEM, "description": "CRM_API_TOKEN is set and the bearer token is not"},
        429: {**_PROBLEM, "description": "Over the fault switch's rateLimitPerSecond"},
        503: {
            **_PROBLEM,
            "description": "A fault injected by /api/crm/_faults (its statusCode, 503 unless set)",
        },
    },
)
admin_router = APIRouter(prefix="/api/crm", tags=["test controls"])
health_router = APIRouter(tags=["health"])

ExternalIdFilter = Annotated[
    str | None, Query(alias="externalId", description="Only this external id (empty: all)")
]


def _blank_as_none(value: str | None) -> str | None:
    return value or None


@customers_router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CrmCustomer,
    responses={
        409: {"model": CrmCustomer, "description": "The externalId is known: the existing record"},
        **_INVALID,
    },
)
async def create_customer(
    body: CrmCustomerRequest, session: SessionDep, response: Response
) -> CrmCustomer | JSONResponse:
    """Create a record with a CRM-assigned id; 409 answers the record that has the externalId.

    The 409 carries the existing record itself (not a problem document), so a client whose
    first create went through but whose answer was lost can adopt the record.
    """
    try:
        record = await store.create_customer(session, body)
    except store.ExternalIdTaken as taken:
        existing = CrmCustomer.model_validate(taken.existing)
        return JSONResponse(
            existing.model_dump(mode="json", by_alias=True), status_code=status.HTTP_409_CONFLICT
        )
    response.headers["Location"] = f"{CUSTOMERS_PATH}/{record.id}"
    return CrmCustomer.model_validate(record)


@customers_router.get("", response_model=CrmCustomerPage, responses=_INVALID)
async def list_customers(
    session: SessionDep,
    external_id: ExternalIdFilter = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    # Bounded: a larger offset cannot be bound as a database integer (it answered 500).
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> CrmCustomerPage:
    """One page of records, oldest first, optionally only the one with an external id."""
    items, total = await store.list_customers(
        session, external_id=_blank_as_none(external_id), limit=limit, offset=offset
    )
    return CrmCustomerPage(items=[CrmCustomer.model_validate(item) for item in items], total=total)


# The batch routes come before the `/{crm_id}` ones: none of those takes a POST, but a
# route added there later must not capture `/batch`.
@customers_router.post(
    "/batch",
    response_model=CrmCustomerBatchResults,
    responses={
        207: {
            "model": CrmCustomerBatchPartial,
            "description": "Some inputs failed (in `errors`); only those in `results` applied",
        },
        **_INVALID,
    },
)
async def upsert_customers(
    body: CrmCustomerBatchRequest, session: SessionDep, runtime: RuntimeDep, request: Request
) -> CrmCustomerBatchResults | JSONResponse:
    """Create or replace 1 to 100 records by `externalId`, in one call.

    An input whose externalId no record has creates one (with a CRM-assigned id, as `POST`
    does); one whose externalId is known replaces every field of that record (as `PUT`
    does, `updatedAt` renewed). 200 when every input was applied: `results`, in input order.

    Per record, as HubSpot's batch APIs do: an input fails on its own, without failing the
    others, and 207 answers `results` (the inputs applied) and `errors` (each with its
    `index` in `inputs`, `externalId`, `status` and `detail`); a failed input is not applied.
    An input fails when the fault switch's `errorRate` draws it (its `statusCode`), when it
    is an object but not a valid record (422: a record-level problem is the record's), or
    when an earlier input of the call names the same externalId (409, the later one: send it
    again in another call).

    As a whole, 422 (problem+json, like any other 422 here): a body whose shape is wrong,
    that is not an object with `inputs`, `inputs` not a list of 1 to 100 objects. `down`,
    `latencyMs`, `rateLimitPerSecond` (one call counts once), auth and `Idempotency-Key` act
    on the call as a whole, as on every call. The request log has one entry per input, with
    the record's own status (201 created, 200 replaced, or its error's).
    """
    plan = batch.plan_upserts(body.inputs, runtime.faults, runtime.rng.random)
    requests = [record_request for _, record_request in plan.accepted]
    applied = await store.upsert_customers(session, requests) if requests else []
    statuses = [0] * len(body.inputs)
    results = []
    for (index, _), (record, created) in zip(plan.accepted, applied, strict=True):
        statuses[index] = batch.CREATED if created else batch.REPLACED
        results.append(CrmCustomer.model_validate(record))
    for refusal in plan.refused:
        statuses[refusal.index] = refusal.status
    report_record_statuses(request, statuses)
    if not plan.refused:
        return CrmCustomerBatchResults(results=results)
    errors = [
        CrmBatchError(
            index=refusal.index,
            external_id=refusal.external_id,
            status=refusal.status,
            detail=refusal.detail,
        )
        for refusal in plan.refused
    ]
    partial = CrmCustomerBatchPartial(results=results, errors=errors)
    return JSONResponse(
        partial.model_dump(mode="json", by_alias=True), status_code=status.HTTP_207_MULTI_STATUS
    )


@customers_router.post(
    "/batch/delete",
    response_model=CrmCustomerBatchDeleted,
    responses={
        207: {
            "model": CrmCustomerBatchDeletePartial,
            "description": "Some ids failed (in `errors`); those were not deleted",
        },
        **_INVALID,
    },
)
async def delete_customers(
    body: CrmCustomerBatchDeleteRequest,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Request,
) -> CrmCustomerBatchDeleted | JSONResponse:
    """Delete the records with 1 to 100 CRM ids, in one call.

    200: `deleted` (the ids whose record this call deleted) and `notFound` (the ids no
    record has: nothing to delete is not an error), each in the order given. Per id, as for
    `POST /batch`: an id the fault switch's `errorRate` draws, or one an earlier id of the
    call repeats (409), fails on its own and is not deleted; 207 then adds `errors`, each
    with its `index` in `ids`, the `id`, the `externalId` of its record (null when there is
    no such record), `status` and `detail`.

    As a whole, 422: a body that is not an object with `ids`, a list of 1 to 100 non-empty
    strings (of at most 255 characters). The request log has one entry per id (its body
    `{"id": ...}`), with the id's own status: 204 deleted, 404 not found, or its error's.
    """
    plan = batch.plan_deletes(body.ids, runtime.faults, runtime.rng.random)
    # Before the delete: a refused id's record is still there, even when an accepted
    # earlier id named the same record.
    refused_ids = [body.ids[refusal.index] for refusal in plan.refused]
    external_ids = await store.find_external_ids(session, refused_ids) if refused_ids else {}
    accepted = [crm_id for _, crm_id in plan.accepted]
    gone = await store.delete_customers(session, accepted) if accepted else set()
    statuses = [0] * len(body.ids)
    deleted, not_found = [], []
    for index, crm_id in plan.accepted:
        if crm_id in gone:
            deleted.append(crm_id)
            statuses[index] = batch.DELETED
        else:
            not_found.append(crm_id)
            statuses[index] = batch.NOT_FOUND
    for refusal in plan.refused:
        statuses[refusal.index] = refusal.status
    report_record_statuses(request, statuses)
    if not plan.refused:
        return CrmCustomerBatchDeleted(deleted=deleted, not_found=not_found)
    errors = [
        CrmBatchDeleteError(
            index=refusal.index,
            id=body.ids[refusal.index],
            external_id=external_ids.get(body.ids[refusal.index]),
            status=refusal.status,
            detail=refusal.detail,
        )
        for refusal in plan.refused
    ]
    partial = CrmCustomerBatchDeletePartial(deleted=deleted, not_found=not_found, errors=errors)
    return JSONResponse(
        partial.model_dump(mode="json", by_alias=True), status_code=status.HTTP_207_MULTI_STATUS
    )


@customers_router.get("/{crm_id}", response_model=CrmCustomer, responses=_NOT_FOUND)
async def get_customer(crm_id: str, session: SessionDep) -> CrmCustomer:
    """One record by its CRM id."""
    return CrmCustomer.model_validate(await store.get_customer(session, crm_id))


@customers_router.put(
    "/{crm_id}",
    response_model=CrmCustomer,
    responses={
        **_NOT_FOUND,
        409: {**_PROBLEM, "description": "The new externalId belongs to another record"},
        **_INVALID,
    },
)
async def replace_customer(
    crm_id: str, body: CrmCustomerRequest, session: SessionDep
) -> CrmCustomer:
    """Replace every field of a record (a full replacement, as the body is complete)."""
    return CrmCustomer.model_validate(await store.replace_customer(session, crm_id, body))


@customers_router.delete("/{crm_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND)
async def delete_customer(crm_id: str, session: SessionDep) -> Response:
    """Delete a record."""
    await store.delete_customer(session, crm_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@admin_router.get("/_faults", response_model=FaultSettings)
async def get_faults(runtime: RuntimeDep) -> FaultSettings:
    """The fault switches now in force."""
    return runtime.faults


@admin_router.put("/_faults", response_model=FaultSettings, responses=_INVALID)
async def update_faults(update: FaultUpdate, runtime: RuntimeDep) -> FaultSettings:
    """Change any subset of the fault switches; the others keep their value."""
    runtime.faults = apply_fault_update(runtime.faults, update)
    # The Kafka consumer runs in another process: it reads the switch from the database.
    await ledger.share_faults(runtime.sessionmaker, runtime.faults)
    return runtime.faults


@admin_router.get("/_calls", response_model=CallsRead)
async def calls_in_flight(runtime: RuntimeDep) -> CallsRead:
    """How many calls to `/api/crm/customers*` and the faces are being answered now: a test
    can tell that a call is on its way (held by `latencyMs`) before its log entry exists."""
    calls = [
        CallInFlight(method=method, path=path, count=count)
        for (method, path), count in sorted(runtime.calls.items())
    ]
    return CallsRead(in_flight=runtime.calls_in_flight, calls=calls)


@admin_router.get("/_requests", response_model=RequestLogPage, responses=_INVALID)
async def list_requests(
    session: SessionDep,
    external_id: ExternalIdFilter = None,
    limit: Annotated[
        int, Query(ge=1, le=store.REQUEST_LOG_RETENTION, description="Keep the newest entries")
    ] = 1000,
) -> RequestLogPage:
    """The requests received on `/api/crm/customers*`: the newest `limit`, oldest first."""
    items, total = await store.list_request_log(
        session, external_id=_blank_as_none(external_id), limit=limit
    )
    return RequestLogPage(
        items=[RequestLogEntryRead.model_validate(item) for item in items], total=total
    )


@health_router.get("/health", response_model=HealthRead)
async def health() -> HealthRead:
    """Liveness: the process answers."""
    return HealthRead(status="ok")
