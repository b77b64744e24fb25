"""The CRM mock's endpoints (README: "The CRM mock"). Thin: parse, call the store, map the result.

Auth, faults, idempotency and the request log of `/api/crm/customers*` are not here but in
`gateway.CustomerCallsGateway`, which wraps every such call.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse

from crm_mock import ledger, store
from crm_mock.deps import RuntimeDep, SessionDep
from crm_mock.faults import FaultSettings, FaultUpdate, apply_fault_update
from crm_mock.schemas import (
    CrmCustomer,
    CrmCustomerPage,
    CrmCustomerRequest,
    HealthRead,
    Problem,
    RequestLogEntryRead,
    RequestLogPage,
)

CUSTOMERS_PATH = "/api/crm/customers"
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
