"""SQL of the `customers` table."""

from typing import Any

from sqlalchemy import Select, case, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from customer_service.customers.models import Customer
from customer_service.sync.models import FailedRequest, RequestStatus


def _has_request(*statuses: RequestStatus) -> Any:
    query = exists().where(FailedRequest.customer_id == Customer.id)
    return query.where(FailedRequest.status.in_(statuses)) if statuses else query


# The customer's sync state, read in the same statement as its row: one snapshot, so a
# delivery settling in between can never show "synced" without its CRM id.
# In Kafka mode a published version is `pending` until the CRM's status event confirms it,
# and `dead` when the CRM dead-lettered it (until a newer version is confirmed).
_CONFIRMED = func.coalesce(Customer.crm_synced_version, 0)
SYNC_STATUS = case(
    (_has_request(RequestStatus.DEAD), "dead"),
    (Customer.crm_dead_version > _CONFIRMED, "dead"),
    (_has_request(RequestStatus.FAILED), "failed"),
    (_has_request(), "pending"),
    (Customer.crm_published_version > _CONFIRMED, "pending"),
    else_="synced",
).label("sync_status")


def _with_status() -> Select[tuple[Customer, str]]:
    return select(Customer, SYNC_STATUS)


async def get(session: AsyncSession, customer_id: int) -> Customer | None:
    return await session.get(Customer, customer_id)


async def get_with_status(session: AsyncSession, customer_id: int) -> tuple[Customer, str] | None:
    row = (await session.execute(_with_status().where(Customer.id == customer_id))).first()
    return None if row is None else (row[0], row[1])


async def page_with_status(
    session: AsyncSession, limit: int, offset: int
) -> tuple[list[tuple[Customer, str]], int]:
    total = await session.scalar(select(func.count()).select_from(Customer))
    query = _with_status().order_by(Customer.id).limit(limit).offset(offset)
    rows = (await session.execute(query)).all()
    return [(row[0], row[1]) for row in rows], int(total or 0)
