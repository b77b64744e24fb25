"""The SQL of reconciliation: our side of a page of customer ids, and our customers by id."""

from collections.abc import Callable, Collection, Mapping
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from customer_service.crm.mapper import CustomerMapper
from customer_service.customers.models import Customer
from customer_service.reconciliation.compare import Local
from customer_service.sync import unconfirmed
from customer_service.sync.models import FailedRequest, UnconfirmedEvent


def mock_record(customer: Customer) -> Mapping[str, Any]:
    return CustomerMapper.to_crm(customer).to_json()


async def local_state(
    session: AsyncSession,
    ids: Collection[int],
    expected: Callable[[Customer], Mapping[str, Any]] = mock_record,
    awaiting: bool = False,
) -> dict[int, Local]:
    """What we hold for each of `ids`: the CRM body it should have (`expected`, the
    connector's) and whether requests of it wait (`awaiting`, Kafka mode: or versions
    published and not yet confirmed); ids with neither a customer nor a request are
    absent."""
    if not ids:
        return {}
    customers = (await session.scalars(select(Customer).where(Customer.id.in_(ids)))).all()
    queued = select(FailedRequest.customer_id).where(FailedRequest.customer_id.in_(ids))
    busy = set((await session.scalars(queued.distinct())).all())
    if awaiting:
        # A version published and not confirmed is on its way too (published again if
        # the broker lost it).
        busy |= await unconfirmed.customers_awaiting(session, list(ids))
    found = {c.id: Local(expected(c), c.id in busy) for c in customers}
    for customer_id in busy - found.keys():
        found[customer_id] = Local(None, True)
    return found


async def customers_after(
    session: AsyncSession, after: int, limit: int, awaiting: bool = False
) -> list[tuple[int, bool]]:
    """The next `limit` customer ids above `after`, each with whether requests of it wait
    (`awaiting`: or versions published and not yet confirmed), by keyset paging: no offset
    to skip, whatever the table's size."""
    busy: Any = exists().where(FailedRequest.customer_id == Customer.id)
    if awaiting:
        busy = or_(busy, exists().where(UnconfirmedEvent.customer_id == Customer.id))
    query = (
        select(Customer.id, busy.label("busy"))
        .where(Customer.id > after)
        .order_by(Customer.id)
        .limit(limit)
    )
    return [(int(row[0]), bool(row[1])) for row in (await session.execute(query)).all()]


async def has_requests(session: AsyncSession, customer_id: int, awaiting: bool = False) -> bool:
    query = select(FailedRequest.id).where(FailedRequest.customer_id == customer_id).limit(1)
    if (await session.scalar(query)) is not None:
        return True
    return awaiting and bool(await unconfirmed.customers_awaiting(session, [customer_id]))
