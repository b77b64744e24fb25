"""The customer endpoints: parse, call the service, shape the answer."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from customer_service.customers import service
from customer_service.customers.schemas import CrmStatus, CustomerCreate, CustomerRead
from customer_service.deps import CustomerId, SessionDep
from customer_service.schemas import INT32_MAX, Page

router = APIRouter(prefix="/api/customers", tags=["customers"])


def _etag(response: Response, read: CustomerRead) -> CustomerRead:
    response.headers["ETag"] = f'"{read.version}"'
    return read


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CustomerRead)
async def create_customer(
    body: CustomerCreate, session: SessionDep, response: Response
) -> CustomerRead:
    customer = await service.create(session, body)
    # Its CREATE was just queued: pending, with no CRM id yet. No need to read it back.
    read = service.to_read(customer, CrmStatus.PENDING)
    response.headers["Location"] = f"/api/customers/{customer.id}"
    return _etag(response, read)


@router.get("", response_model=Page[CustomerRead])
async def list_customers(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
) -> Page[CustomerRead]:
    items, total = await service.page(session, limit, offset)
    return Page(items=items, total=total)


@router.get("/{customer_id}", response_model=CustomerRead)
async def get_customer(
    customer_id: CustomerId, session: SessionDep, response: Response
) -> CustomerRead:
    return _etag(response, await service.read(session, customer_id))


@router.put("/{customer_id}", response_model=CustomerRead)
async def replace_customer(
    customer_id: CustomerId,
    body: CustomerCreate,
    session: SessionDep,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> CustomerRead:
    await service.replace(session, customer_id, body, if_match)
    return _etag(response, await service.read(session, customer_id))


@router.delete("/{customer_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_customer(customer_id: CustomerId, session: SessionDep) -> Response:
    await service.delete(session, customer_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
