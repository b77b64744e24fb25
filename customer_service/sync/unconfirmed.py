"""All SQL of Kafka mode's published-but-unconfirmed versions (`unconfirmed_events`).

In Kafka mode a publish the broker took is not the end of the service's responsibility:
the broker may still lose the event (a memory broker restarted, an unclean leader
election). So the transaction that settles a publish keeps the version it sent
(`keep`, called by `repository.settle`) beside removing its outbox rows, and the status
reader's transaction that records the CRM's `applied` or `dead` removes it (`confirm`):

    outbox row --published--> unconfirmed event --applied/dead reported--> (row deleted)
                                   |      ^
                                   +------+ not confirmed within KAFKA_CONFIRM_SECONDS
                                            of its last publish: published again
                                            (`sync.republisher`), same eventId

A report confirms every version of the customer up to the one it names: the CRM's
consumer applies a customer's events in version order and skips older ones, so an older
version still here was lost, or is superseded by the one reported. A version at or below
the customer's `crm_synced_version` or `crm_dead_version` is confirmed too (a report read
before its publish was settled), and is dropped instead of published again.

These rows are not `failed_requests`: nothing failed and there is nothing for an operator
to replay or discard; the customer shows `pending`, and the dashboard and `/metrics`
count them apart ("awaiting the CRM").
"""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Exists,
    Integer,
    Table,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from customer_service.columns import UTCDateTime
from customer_service.customers.models import Customer
from customer_service.sync.models import QueuedRequest, UnconfirmedEvent

_events = cast(Table, UnconfirmedEvent.__table__)
_customers = cast(Table, Customer.__table__)

# The outbox rows a batch published, copied before they are deleted. Plain SQL that both
# databases speak: a row kept already (two settles of one row, after a lapsed claim) is
# left as it is instead of failing the whole settle.
_KEEP_SQL = (
    "INSERT INTO unconfirmed_events (id, customer_id, operation, version, payload, event_id,"
    " occurred_at, published_at, publications)"
    " SELECT id, customer_id, operation, version, payload, idempotency_key, created_at,"
    " :b_now, 1 FROM failed_requests WHERE id {rows}"
    " ON CONFLICT (id) DO NOTHING"
)
_KEEP = text(_KEEP_SQL.format(rows="IN :b_ids")).bindparams(
    bindparam("b_ids", expanding=True), bindparam("b_now", type_=UTCDateTime())
)
# The same keep for a data-modifying `WITH` on PostgreSQL (`repository.settle_and_release`
# settling a group in one statement): its rows an array, `b_sent`.
KEEP_AS_CTE = (
    text(_KEEP_SQL.format(rows="= ANY(:b_sent)"))
    .bindparams(
        bindparam("b_sent", type_=ARRAY(BigInteger)), bindparam("b_now", type_=UTCDateTime())
    )
    .columns()
    .cte("kept_events")
)
# Run once per status batch, with every status's parameters (executemany).
_CONFIRM = delete(_events).where(
    _events.c.customer_id == bindparam("b_customer"),
    _events.c.version <= bindparam("b_version", type_=Integer),
)


async def keep(connection: AsyncConnection, sent_ids: Sequence[int], now: datetime) -> None:
    """Keep the outbox rows `sent_ids` (each the row whose state a publish carried) as
    published at `now`, unconfirmed; in the transaction that deletes them."""
    if sent_ids:
        await connection.execute(_KEEP, {"b_ids": list(sent_ids), "b_now": now})


async def confirm(session: AsyncSession, reported: Iterable[tuple[int, int]]) -> None:
    """The CRM reported (customer, version) applied or dead: that version and the
    customer's older ones are no longer ours to publish."""
    params = [{"b_customer": c, "b_version": v} for c, v in sorted(set(reported))]
    if params:
        await session.execute(_CONFIRM, params)


async def overdue_customers(session: AsyncSession, before: datetime, limit: int) -> list[int]:
    """Customers with a version last published at or before `before` and not confirmed,
    the longest waiting first."""
    query = (
        select(_events.c.customer_id)
        .where(_events.c.published_at <= before)
        .group_by(_events.c.customer_id)
        .order_by(func.min(_events.c.published_at), _events.c.customer_id)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


def _reported_already() -> Exists:
    """The customer row says the CRM reported this version, or a newer one."""
    return exists().where(
        _customers.c.id == _events.c.customer_id,
        or_(
            _customers.c.crm_synced_version >= _events.c.version,
            _customers.c.crm_dead_version >= _events.c.version,
        ),
    )


async def overdue_of(
    session: AsyncSession, customer_ids: Sequence[int], before: datetime
) -> list[QueuedRequest]:
    """The overdue versions of these customers, each customer's oldest first, as the
    outbox rows they were published from (what the connector sends). Versions the
    customer row shows reported already are removed, not returned."""
    if not customer_ids:
        return []
    ids = sorted(set(customer_ids))
    await session.execute(
        delete(_events).where(_events.c.customer_id.in_(ids), _reported_already())
    )
    query = (
        select(_events)
        .where(_events.c.customer_id.in_(ids), _events.c.published_at <= before)
        .order_by(_events.c.customer_id, _events.c.id)
    )
    return [
        QueuedRequest(
            id=row.id,
            customer_id=row.customer_id,
            operation=row.operation,
            status="published",
            attempts=row.publications,
            last_error=None,
            next_attempt_at=row.published_at,
            version=row.version,
            payload=row.payload,
            crm_id=None,
            idempotency_key=row.event_id,
            created_at=row.occurred_at,
            updated_at=row.published_at,
        )
        for row in (await session.execute(query)).all()
    ]


async def note_published(session: AsyncSession, ids: Sequence[int], now: datetime) -> None:
    """These versions were published again at `now`: their wait starts over."""
    if ids:
        await session.execute(
            update(_events)
            .where(_events.c.id.in_(sorted(ids)))
            .values(published_at=now, publications=_events.c.publications + 1)
        )


async def count_and_oldest(session: AsyncSession) -> tuple[int, datetime | None]:
    """How many versions await the CRM's confirmation, and when the oldest was written."""
    row = (await session.execute(select(func.count(), func.min(_events.c.occurred_at)))).one()
    return int(row[0]), row[1]


async def customers_awaiting(session: AsyncSession, customer_ids: Sequence[int]) -> set[int]:
    """Which of these customers have a version awaiting the CRM's confirmation."""
    if not customer_ids:
        return set()
    query = select(_events.c.customer_id).where(_events.c.customer_id.in_(customer_ids))
    return set((await session.scalars(query.distinct())).all())
