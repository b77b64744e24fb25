"""The failed-request endpoints: look at the outbox, retry it, replay or discard a row."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BeforeValidator, Field

from customer_service.columns import utc_now
from customer_service.deps import RequestId, SessionDep
from customer_service.errors import RequestNotFound
from customer_service.schemas import INT32_MAX, Page
from customer_service.sync import repository
from customer_service.sync.models import RequestStatus
from customer_service.sync.outbox import kick_after_commit
from customer_service.sync.retry import Urgency
from customer_service.sync.schemas import FailedRequestRead, RetryReport

router = APIRouter(prefix="/api/failed-requests", tags=["failed requests"])

# `?status=&customerId=` (as the README writes the query) means no filter, not a bad value.
BLANK_IS_ABSENT = BeforeValidator(lambda value: None if value == "" else value)


@router.get("", response_model=Page[FailedRequestRead])
async def list_failed_requests(
    session: SessionDep,
    status_: Annotated[RequestStatus | None, BLANK_IS_ABSENT, Query(alias="status")] = None,
    customer_id: Annotated[
        Annotated[int, Field(ge=1, le=INT32_MAX)] | None,
        BLANK_IS_ABSENT,
        Query(alias="customerId"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
) -> Page[FailedRequestRead]:
    rows, total = await repository.page(session, status_, customer_id, limit, offset)
    return Page(items=[FailedRequestRead.model_validate(r) for r in rows], total=total)


@router.post("/retry", response_model=RetryReport)
async def retry_now(request: Request) -> RetryReport:
    """One pass now over every pending and failed request, due or not."""
    counts = await request.app.state.retry_job.run_pass(Urgency.OPERATOR)
    return RetryReport(**counts.as_dict())


@router.post("/{request_id}/replay", response_model=FailedRequestRead)
async def replay(request_id: RequestId, session: SessionDep) -> FailedRequestRead:
    row = await repository.replay(session, request_id, utc_now())
    if row is None:
        raise RequestNotFound(request_id)
    kick_after_commit(session, row.customer_id)
    return FailedRequestRead.model_validate(row)


@router.delete("/{request_id}", status_code=status.HTTP_204_NO_CONTENT)
async def discard(request_id: RequestId, session: SessionDep) -> Response:
    row = await repository.discard(session, request_id)
    if row is None:
        raise RequestNotFound(request_id)
    # A discarded dead request no longer holds back the customer's newer ones.
    kick_after_commit(session, row.customer_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
