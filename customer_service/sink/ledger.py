"""Every statement on `sink_customers` (see `sink.models`): one read and one write per batch."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from customer_service.columns import UTCDateTime
from customer_service.sink.models import SinkCustomer


@dataclass(frozen=True)
class Settled:
    """What the sink settled last for one customer (a row of `sink_customers`)."""

    customer_id: int
    rank: int
    event_id: str
    status: str
    crm_id: str | None
    error: str | None = None


async def settled_of(session: AsyncSession, customer_ids: Iterable[int]) -> dict[int, Settled]:
    """The rows of these customers, by customer id (a customer never settled has none)."""
    wanted = sorted(set(customer_ids))
    if not wanted:
        return {}
    found = await session.execute(
        select(
            SinkCustomer.customer_id,
            SinkCustomer.event_rank,
            SinkCustomer.event_id,
            SinkCustomer.status,
            SinkCustomer.crm_id,
            SinkCustomer.error,
        ).where(SinkCustomer.customer_id.in_(wanted))
    )
    return {row.customer_id: Settled(*row) for row in found.all()}


# Plain SQL both databases speak, run once for a whole batch (executemany). A row only
# ever moves forward: a sink that lost its partitions and still settles an older event
# (its session expired while it sent) never writes over a newer one. Another event of the
# same rank (reconciliation's repair of a missing record) takes the row: its CRM id is
# the record's now.
_RECORD = text(
    "INSERT INTO sink_customers"
    " (customer_id, event_rank, event_id, status, crm_id, error, updated_at)"
    " VALUES (:customer_id, :rank, :event_id, :status, :crm_id, :error, :updated_at)"
    " ON CONFLICT (customer_id) DO UPDATE SET event_rank = excluded.event_rank,"
    " event_id = excluded.event_id, status = excluded.status, crm_id = excluded.crm_id,"
    " error = excluded.error, updated_at = excluded.updated_at"
    " WHERE sink_customers.event_rank < excluded.event_rank"
    " OR (sink_customers.event_rank = excluded.event_rank"
    " AND sink_customers.event_id <> excluded.event_id)"
).bindparams(bindparam("updated_at", type_=UTCDateTime()))


async def record(session: AsyncSession, settled: Sequence[Settled], now: datetime) -> None:
    """Note what was settled (one row per customer: the newest of its events here)."""
    newest: dict[int, Settled] = {}
    for item in settled:
        if item.customer_id not in newest or newest[item.customer_id].rank < item.rank:
            newest[item.customer_id] = item
    if not newest:
        return
    await session.execute(
        _RECORD,
        [
            {
                "customer_id": s.customer_id,
                "rank": s.rank,
                "event_id": s.event_id,
                "status": s.status,
                "crm_id": s.crm_id,
                "error": None if s.error is None else s.error[:2000],
                "updated_at": now,
            }
            for s in newest.values()
        ],
    )
