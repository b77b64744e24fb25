"""All SQL of the outbox: rows of `failed_requests` and the per-customer claims.

Every delivery statement is written here once, in SQLAlchemy Core that SQLite and
PostgreSQL both run (the one test of `tests/integration/customer_service/
test_outbox_statements.py` runs them on both). A batch of the engine (`sync.engine`)
uses four: `claim` its customers under the batch's owner, read their `queues` (both in
one round trip on PostgreSQL: `claim_and_read`, through migration 0007's PL/pgSQL
function, whose two statements are the same claim and read), then `settle` every outcome
and `release` the claims in one transaction (on PostgreSQL, deliveries or publishes alone:
the same statements as one, `settle_and_release`). Apart from that function (the one
statement with a PostgreSQL text of its own, tested against the pair it stands for),
each statement is written once.

A batch's list of customers or rows is one parameter: on PostgreSQL an array
(`= ANY(:ids)`, `unnest(:ids)`), so each statement has one text whatever the batch's size,
prepared once per connection; on SQLite an expanding `IN` list (`one_of`). With a list
of placeholders per size, the batches' many sizes made as many statement texts, each
prepared again whenever asyncpg's statement cache had let it go.
"""

import functools
import uuid
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    String,
    Table,
    TextClause,
    any_,
    bindparam,
    case,
    column,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import Grouping

from customer_service.columns import UTCDateTime
from customer_service.customers.models import Customer
from customer_service.sync import unconfirmed
from customer_service.sync.models import (
    QUEUED_COLUMNS,
    FailedRequest,
    QueuedRequest,
    RequestStatus,
    SyncClaim,
)

OPEN_STATUSES = (RequestStatus.PENDING, RequestStatus.FAILED)

# What the statements run on: the delivery engine's plain connection (`engine.transaction`:
# without an ORM session's bookkeeping around them, 12-20 % less CPU a customer delivered), or
# a caller's session.
Executor = AsyncSession | AsyncConnection


async def due_customer_ids(
    session: Executor, now: datetime, every: bool, fresh_since: datetime | None = None
) -> "array[int]":
    """Customers with a request to try now, the longest waiting first.

    Only a customer's oldest request counts (a newer one never overtakes it); a customer
    whose oldest request is dead is left for the operator. `every`: due or not.
    `fresh_since`: leave out a customer whose oldest request was written after it and never
    tried (the delivery its own write kicked is on it).

    Read in partitions into a packed array (8 bytes an id): a pass over a backlog of
    100,000 customers holds neither 100,000 result rows nor 100,000 int objects, so the
    memory of a drain does not grow with its backlog.
    """
    heads = (
        select(FailedRequest.customer_id, func.min(FailedRequest.id).label("head_id"))
        .group_by(FailedRequest.customer_id)
        .subquery()
    )
    query = (
        select(heads.c.customer_id)
        .join(FailedRequest, FailedRequest.id == heads.c.head_id)
        .where(FailedRequest.status.in_(OPEN_STATUSES))
        .order_by(heads.c.head_id)
    )
    if not every:
        query = query.where(FailedRequest.next_attempt_at <= now)
    if fresh_since is not None:
        query = query.where(
            or_(FailedRequest.attempts > 0, FailedRequest.created_at <= fresh_since)
        )
    ids: array[int] = array("q")
    result = await session.stream_scalars(query.execution_options(yield_per=DUE_PARTITION))
    async for partition in result.partitions():
        ids.extend(partition)
    return ids


DUE_PARTITION = 2000


async def next_attempt_at(session: Executor) -> datetime | None:
    """When the earliest failed request is due (None when none is waiting)."""
    query = select(func.min(FailedRequest.next_attempt_at)).where(
        FailedRequest.status == RequestStatus.FAILED
    )
    due: datetime | None = await session.scalar(query)
    return due


# How many of a customer's requests one look reads (a batch is planned from them).
QUEUE_LIMIT = 100


async def queues_and_crm_ids(
    session: Executor, customer_ids: list[int], limit: int = QUEUE_LIMIT
) -> dict[int, tuple[list[QueuedRequest], str | None]]:
    """Many customers' queues in one statement: each one's first `limit` requests, oldest
    first, and the CRM id its customer row holds (None when it has none, or the customer
    is gone). A customer with no request is left out. Read as plain rows (`QueuedRequest`),
    not ORM objects: the engine only reads them, and loading them through the ORM was
    the larger part of a claim's CPU."""
    params = {"b_customer_ids": customer_ids, "b_limit": limit}
    queues: dict[int, tuple[list[QueuedRequest], str | None]] = {}
    query = statements(is_postgresql(session)).queues
    for values in (await session.execute(query, params)).tuples():
        row = QueuedRequest(*values[:-1])
        queue = queues.setdefault(row.customer_id, ([], values[-1]))
        queue[0].append(row)
    return queues


# Core statements of the engine's batches (`sync.engine`), each built once per dialect
# (`statements`) and compiled once.
_requests = cast(Table, FailedRequest.__table__)
_customers = cast(Table, Customer.__table__)
_claims = cast(Table, SyncClaim.__table__)
LEARN_CRM_ID = (
    update(_requests)
    .where(_requests.c.customer_id == bindparam("b_customer"), _requests.c.crm_id.is_(None))
    .values(crm_id=bindparam("b_crm_id"))
)


def is_postgresql(bound: Executor) -> bool:
    """Whether the session or connection speaks to PostgreSQL (else SQLite)."""
    if isinstance(bound, AsyncConnection):
        return bound.dialect.name == "postgresql"
    return bound.get_bind().dialect.name == "postgresql"


def one_of(column: Any, name: str, item_type: Any, arrays: bool) -> ColumnElement[bool]:
    """`column` is one of the list bound as `name`: `= ANY(:name)`, one array parameter,
    with `arrays` (PostgreSQL); else an expanding `IN (...)` list."""
    if arrays:
        return cast(ColumnElement[bool], column == any_(bindparam(name, type_=ARRAY(item_type))))
    return cast(ColumnElement[bool], column.in_(bindparam(name, expanding=True)))


def raised_to_version(column: Any, version: Any = None) -> Any:
    """`column` raised to `version` (default: the bound `b_version`), never lowered (NULL
    counts as lowest): the CRM side of a customer only ever moves forward, whatever order
    answers arrive in."""
    if version is None:
        version = bindparam("b_version", type_=Integer)
    return case((column.is_(None), version), (column < version, version), else_=column)


def _noting(column_name: str, arrays: bool, with_crm_id: bool) -> Any:
    """An UPDATE of customers raising `column_name` to each one's version (and setting its
    CRM id, `with_crm_id`). On PostgreSQL one statement for the whole batch: the customers,
    versions and CRM ids bound as three arrays (`b_customers`, `b_versions`, `b_crm_ids`),
    each row finding its own by its place in the first; the rows are found by primary key
    (`id = ANY`), whatever the plan was prepared on. (An UPDATE ... FROM unnest() had its
    plan made while the table was small, and scanned the whole table: 0.5 ms a batch.) On
    SQLite one row per customer (executemany of `b_customer`, `b_version`, `b_crm_id`)."""
    column = _customers.c[column_name]
    values: dict[str, Any]
    if not arrays:
        values = {column_name: raised_to_version(column)}
        if with_crm_id:
            values["crm_id"] = bindparam("b_crm_id")
        return update(_customers).where(_customers.c.id == bindparam("b_customer")).values(values)
    customers = bindparam("b_customers", type_=ARRAY(Integer))
    place = func.array_position(customers, _customers.c.id)
    # Parenthesised: PostgreSQL subscripts a bound array only as `($1::INTEGER[])[i]`.
    versions = Grouping(bindparam("b_versions", type_=ARRAY(Integer)))
    values = {column_name: raised_to_version(column, versions[place])}
    if with_crm_id:
        values["crm_id"] = Grouping(bindparam("b_crm_ids", type_=ARRAY(String)))[place]
    return update(_customers).where(_customers.c.id == any_(customers)).values(values)


@dataclass(frozen=True)
class Statements:
    """The batch statements of one dialect (`statements`)."""

    arrays: bool
    queues: Any
    delete_requests: Any
    record_failure: Any
    note_synced: Any
    note_published: Any
    # The claims of these customers (`b_customers`) held by these owners (`b_owners`).
    release: Any


@functools.cache
def statements(arrays: bool) -> Statements:
    """The batch statements, with array parameters (PostgreSQL) or expanding lists."""
    # The queue rows come straight from the windowed scan of the customers' index range,
    # and each CRM id from a look-up by primary key: no join the planner could turn into a
    # scan of a whole table (which it did on PostgreSQL, on statistics taken before a
    # 100,000 backlog arrived: 40 ms a group instead of 0.4).
    ranked = (
        select(
            FailedRequest,
            func.row_number()
            .over(partition_by=FailedRequest.customer_id, order_by=FailedRequest.id)
            .label("position"),
        )
        .where(one_of(FailedRequest.customer_id, "b_customer_ids", Integer, arrays))
        .subquery()
    )
    queues = (
        select(
            *(ranked.c[name] for name in QUEUED_COLUMNS),
            select(Customer.crm_id).where(Customer.id == ranked.c.customer_id).scalar_subquery(),
        )
        .where(ranked.c.position <= bindparam("b_limit"))
        .order_by(ranked.c.customer_id, ranked.c.id)
    )
    # Row ids are BIGINT: bound as BIGINT[] (an INTEGER[] would refuse ids past 2**31).
    row_ids = one_of(_requests.c.id, "b_ids", BigInteger, arrays)
    return Statements(
        arrays=arrays,
        queues=queues,
        delete_requests=delete(_requests).where(row_ids),
        record_failure=update(_requests)
        .where(row_ids)
        .values(
            attempts=bindparam("b_attempts"),
            last_error=bindparam("b_error"),
            status=bindparam("b_status"),
            next_attempt_at=bindparam("b_next", type_=UTCDateTime()),
            updated_at=bindparam("b_now", type_=UTCDateTime()),
        ),
        note_synced=_noting("crm_synced_version", arrays, with_crm_id=True),
        # Kafka mode: the version handed to the broker, not yet confirmed by the CRM.
        note_published=_noting("crm_published_version", arrays, with_crm_id=False),
        release=_release(arrays, "b_customers"),
    )


def _release(arrays: bool, customers: str) -> Any:
    """Give back the claims of these customers (`customers`) held by these owners."""
    return delete(_claims).where(
        one_of(_claims.c.owner, "b_owners", String, arrays),
        one_of(_claims.c.customer_id, customers, Integer, arrays),
    )


@functools.cache
def _settled_at_once(confirmed: bool) -> Any:
    """PostgreSQL: `settle` of deliveries only, and `release_done`, as one statement: the
    same statements, each a data-modifying `WITH` of one query. It runs alone, committing
    on its own (no `BEGIN`, no `COMMIT`: one round trip instead of five or six). HTTP mode
    (`confirmed`) notes the synced versions and CRM ids; Kafka mode keeps what each publish
    carried (`unconfirmed.KEEP_AS_CTE`) and notes the published versions. Every part
    sees the one snapshot taken before any of them: the keep copies the rows the delete
    removes, and the parts touch different tables otherwise."""
    sql = statements(arrays=True)
    parts = [sql.delete_requests.cte("settled_rows")]
    if confirmed:
        parts.append(sql.note_synced.cte("noted_customers"))
    else:
        parts += [unconfirmed.KEEP_AS_CTE, sql.note_published.cte("noted_customers")]
    parts.append(_release(True, "b_done").cte("released_claims"))
    return select(literal_column("1")).add_cte(*parts)


def _noted_params(
    arrays: bool, delivered: list["Settled"], with_crm_id: bool
) -> dict[str, Any] | list[dict[str, Any]]:
    """The delivered customers' versions (and CRM ids) as `_noting`'s parameters, in
    customer order, each customer once with its highest version (as arrays a row finds
    only the first place of its id)."""
    highest: dict[int, Settled] = {}
    for one in delivered:
        kept = highest.get(one.customer_id)
        if kept is None or one.version > kept.version:
            highest[one.customer_id] = one
    in_order = [highest[customer_id] for customer_id in sorted(highest)]
    if arrays:
        params: dict[str, Any] = {
            "b_customers": [one.customer_id for one in in_order],
            "b_versions": [one.version for one in in_order],
        }
        if with_crm_id:
            params["b_crm_ids"] = [one.crm_id for one in in_order]
        return params
    rows: list[dict[str, Any]] = []
    for one in in_order:
        row: dict[str, Any] = {"b_customer": one.customer_id, "b_version": one.version}
        if with_crm_id:
            row["b_crm_id"] = one.crm_id
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Settled:
    """One delivered batch: the rows it removes, and what the CRM now holds."""

    customer_id: int
    row_ids: list[int]
    crm_id: str | None
    version: int


@dataclass(frozen=True)
class Failure:
    """One failed attempt: the rows it was for, and what becomes of them."""

    row_ids: list[int]
    error: str
    attempts: int
    dead: bool
    next_attempt_at: datetime


async def settle(
    session: Executor,
    delivered: list[Settled],
    failures: list[Failure],
    confirmed: bool,
    learnt: dict[int, str],
    now: datetime,
) -> None:
    """Record a batch's outcomes: remove the delivered rows and note what the CRM now
    holds (`confirmed`: the synced version and CRM id; else, Kafka mode, the version
    published), record each failed attempt, and give the customers' requests still
    lacking one the CRM id a create returned (`learnt`: a later DELETE needs it once the
    customer row is gone). A few statements whatever the batch's size."""
    connection = session if isinstance(session, AsyncConnection) else await session.connection()
    sql = statements(is_postgresql(connection))
    ids = [row_id for one in delivered for row_id in one.row_ids]
    if ids and not confirmed:
        # Kafka mode: what each publish carried (the newest row it settles, `plan`) stays
        # the service's until the CRM confirms it (`sync.unconfirmed`).
        await unconfirmed.keep(connection, _sent_rows(delivered), now)
    if ids:
        await connection.execute(sql.delete_requests, {"b_ids": ids})
    if confirmed:
        noted = [one for one in delivered if one.crm_id is not None]
        if noted:
            params = _noted_params(sql.arrays, noted, with_crm_id=True)
            await connection.execute(sql.note_synced, params)
    elif delivered:
        params = _noted_params(sql.arrays, delivered, with_crm_id=False)
        await connection.execute(sql.note_published, params)
    for failure in failures:
        status = RequestStatus.DEAD if failure.dead else RequestStatus.FAILED
        params = {
            "b_ids": failure.row_ids,
            "b_attempts": failure.attempts,
            "b_error": failure.error[:2000],
            "b_status": status.value,
            "b_next": failure.next_attempt_at,
            "b_now": now,
        }
        await connection.execute(sql.record_failure, params)
    if learnt:
        params_learnt = [{"b_customer": cid, "b_crm_id": crm_id} for cid, crm_id in learnt.items()]
        await connection.execute(LEARN_CRM_ID, params_learnt)


def _sent_rows(delivered: list[Settled]) -> list[int]:
    """Kafka mode: the row each publish carried (the newest it settles, `plan`)."""
    return [max(one.row_ids) for one in delivered if one.row_ids]


@dataclass
class Outcomes:
    """A settling group's outcomes, every batch of it merged."""

    now: datetime
    confirmed: bool  # False in Kafka mode: published, not yet confirmed by the CRM
    delivered: list[Settled] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    learnt: dict[int, str] = field(default_factory=dict)

    @property
    def at_once(self) -> bool:
        """Deliveries only, none of whose customers has requests waiting for a CRM id it
        learnt: one statement on PostgreSQL (`settle_and_release`)."""
        return bool(self.delivered) and not self.failures and not self.learnt


async def settle_and_release(
    connection: AsyncConnection,
    outcomes: Outcomes,
    done: dict[str, set[int]],
) -> None:
    """`settle` the outcomes, then `release_done` the claims. On PostgreSQL, deliveries
    alone (`Outcomes.at_once`) are one statement (`_settled_at_once`) that needs no
    transaction around it; everything else runs in the caller's transaction."""
    delivered = outcomes.delivered
    if not (is_postgresql(connection) and outcomes.at_once):
        await settle(
            connection,
            delivered,
            outcomes.failures,
            outcomes.confirmed,
            outcomes.learnt,
            outcomes.now,
        )
        await release_done(connection, done)
        return
    params: dict[str, Any] = {
        "b_ids": [row_id for one in delivered for row_id in one.row_ids],
        "b_customers": [],
        "b_versions": [],
        **_done_params(done, "b_done"),
    }
    if outcomes.confirmed:
        params["b_crm_ids"] = []
        noted = [one for one in delivered if one.crm_id is not None]
    else:
        params["b_sent"] = _sent_rows(delivered)
        params["b_now"] = outcomes.now
        noted = delivered
    if noted:
        noted_params = _noted_params(True, noted, with_crm_id=outcomes.confirmed)
        params.update(cast(dict[str, Any], noted_params))
    await connection.execute(_settled_at_once(outcomes.confirmed), params)


async def note_held(session: Executor, customer_ids: list[int], error: str, now: datetime) -> None:
    """Say why on the requests of these customers that wait, never attempted, while
    deliveries are held (`hold`): their `lastError`, nothing else."""
    for start in range(0, len(customer_ids), 500):
        await session.execute(
            update(FailedRequest)
            .where(
                FailedRequest.customer_id.in_(customer_ids[start : start + 500]),
                FailedRequest.status == RequestStatus.PENDING,
                FailedRequest.attempts == 0,
            )
            .values(last_error=error[:2000], updated_at=now)
        )


# Plain SQL; unlike the dialects' `on_conflict_do_update` constructs, it is compiled once
# (on SQLite, once per number of claims) and cached. The rows go in in customer order.
_CLAIM_CONFLICT = (
    " ON CONFLICT (customer_id) DO UPDATE"
    " SET owner = excluded.owner, expires_at = excluded.expires_at"
    " WHERE sync_claims.owner = excluded.owner OR sync_claims.expires_at < :now"
    " RETURNING customer_id, owner"
)
_CLAIM_TIMES = (
    bindparam("expires_at", type_=UTCDateTime()),
    bindparam("now", type_=UTCDateTime()),
)
# PostgreSQL: the customers as one array parameter, whatever their number.
CLAIM_ARRAY = text(
    "INSERT INTO sync_claims (customer_id, owner, expires_at)"
    " SELECT claimed.customer_id, :owner, :expires_at"
    " FROM unnest(CAST(:customers AS INTEGER[])) AS claimed(customer_id)"
    " ORDER BY claimed.customer_id" + _CLAIM_CONFLICT
).bindparams(*_CLAIM_TIMES)


@functools.lru_cache(maxsize=256)
def _claims_statement(count: int) -> TextClause:
    """SQLite: one row of placeholders per customer."""
    values = ", ".join(f"(:customer_{i}, :owner, :expires_at)" for i in range(count))
    return text(
        f"INSERT INTO sync_claims (customer_id, owner, expires_at) VALUES {values}"
        + _CLAIM_CONFLICT
    ).bindparams(*_CLAIM_TIMES)


async def claim(
    session: Executor, customer_ids: Iterable[int], owner: str, now: datetime, lease: float
) -> set[int]:
    """Claim these customers under `owner` for `lease` seconds from `now`, in one
    statement; the customers whose claim is now ours (another's unexpired claim stays).
    In customer order: every batch, of any replica, locks the claims it shares with
    another in the same order."""
    ordered = sorted(set(customer_ids))
    if not ordered:
        return set()
    params: dict[str, object] = {
        "owner": owner,
        "expires_at": now + timedelta(seconds=lease),
        "now": now,
    }
    if is_postgresql(session):
        params["customers"] = ordered
        found = await session.execute(CLAIM_ARRAY, params)
    else:
        for i, customer_id in enumerate(ordered):
            params[f"customer_{i}"] = customer_id
        found = await session.execute(_claims_statement(len(ordered)), params)
    return {customer_id for customer_id, holder in found.all() if holder == owner}


# PostgreSQL: the claim and the queue read in one round trip (migration 0007's function
# runs them as two statements, each with its own snapshot).
CLAIM_AND_READ = (
    text(
        "SELECT * FROM sync_claim_and_read("
        "CAST(:customers AS INTEGER[]), :owner, :expires_at, :now, :limit)"
    )
    .bindparams(*_CLAIM_TIMES)
    .columns(
        column("claimed", Integer),
        # The queue's columns, typed as the table's (timestamps in UTC, the JSON payload).
        *(column(name, _requests.c[name].type) for name in QUEUED_COLUMNS),
        column("customer_crm_id", String),
    )
)

Queues = dict[int, tuple[list[QueuedRequest], str | None]]


async def claim_and_read(
    session: Executor,
    customer_ids: Iterable[int],
    owner: str,
    now: datetime,
    lease: float,
    limit: int = QUEUE_LIMIT,
) -> tuple[set[int], Queues]:
    """`claim`, then `queues_and_crm_ids` of the customers claimed: one round trip on
    PostgreSQL (each statement still sees what committed before it), two on SQLite."""
    if not is_postgresql(session):
        claimed = await claim(session, customer_ids, owner, now, lease)
        if not claimed:
            return claimed, {}
        return claimed, await queues_and_crm_ids(session, sorted(claimed), limit)
    ordered = sorted(set(customer_ids))
    if not ordered:
        return set(), {}
    params = {
        "customers": ordered,
        "owner": owner,
        "expires_at": now + timedelta(seconds=lease),
        "now": now,
        "limit": limit,
    }
    claimed = set()
    queues: Queues = {}
    for values in (await session.execute(CLAIM_AND_READ, params)).tuples():
        claimed.add(values[0])
        if values[1] is None:
            continue  # claimed, nothing queued
        row = QueuedRequest(*values[1:-1])
        queue = queues.setdefault(row.customer_id, ([], values[-1]))
        queue[0].append(row)
    return claimed, queues


async def release(session: Executor, owner: str, customer_ids: Iterable[int] | None = None) -> None:
    """Give back the claims held under `owner` (only these customers', when named)."""
    if customer_ids is None:
        await session.execute(delete(_claims).where(_claims.c.owner == owner))
        return
    ids = sorted(customer_ids)
    if ids:
        query = statements(is_postgresql(session)).release
        await session.execute(query, {"b_owners": [owner], "b_customers": ids})


async def release_done(session: Executor, done: dict[str, set[int]]) -> None:
    """Give back, in one statement, the claims of these customers held by these owners
    (owner -> its customers): the customers several batches are done with."""
    params = _done_params(done, "b_customers")
    if not params["b_customers"]:
        return
    await session.execute(statements(is_postgresql(session)).release, params)


def _done_params(done: dict[str, set[int]], customers: str) -> dict[str, list[Any]]:
    """The owners and customers of `done` as the release's parameters."""
    return {
        "b_owners": sorted(done),
        customers: sorted(cid for ids in done.values() for cid in ids),
    }


async def renew(session: Executor, owner: str, now: datetime, lease: float) -> int:
    """Extend the claims held under `owner` by a lease from `now`; how many are still
    ours. Never takes a claim: a renewal that lands after its batch gave the claims back
    changes nothing."""
    renewed = await session.execute(
        update(_claims)
        .where(_claims.c.owner == owner)
        .values(expires_at=now + timedelta(seconds=lease))
        .returning(_claims.c.customer_id)
    )
    return len(renewed.all())


async def replay(session: AsyncSession, request_id: int, now: datetime) -> FailedRequest | None:
    """Make a request due again with a fresh budget and a fresh Idempotency-Key; None if
    there is no such request."""
    row = await session.get(FailedRequest, request_id)
    if row is None:
        return None
    row.status = RequestStatus.PENDING
    row.attempts = 0
    row.next_attempt_at = now
    row.updated_at = now
    # A new key: a CRM that stored its answer (say a 422) under the old one would replay
    # it forever. Safe: a CREATE that did land meanwhile is adopted from the 409.
    row.idempotency_key = str(uuid.uuid4())
    return row


async def discard(session: AsyncSession, request_id: int) -> FailedRequest | None:
    row = await session.get(FailedRequest, request_id)
    if row is not None:
        await session.delete(row)
    return row


async def page(
    session: AsyncSession,
    status: RequestStatus | None,
    customer_id: int | None,
    limit: int,
    offset: int,
) -> tuple[list[FailedRequest], int]:
    """A page of requests, oldest first, with the total that match."""
    query = select(FailedRequest)
    if status is not None:
        query = query.where(FailedRequest.status == status)
    if customer_id is not None:
        query = query.where(FailedRequest.customer_id == customer_id)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(FailedRequest.id).limit(limit).offset(offset))
    return list(rows.all()), int(total or 0)


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    query = select(FailedRequest.status, func.count()).group_by(FailedRequest.status)
    return {status: int(n) for status, n in (await session.execute(query)).all()}


async def oldest_created_at(session: AsyncSession) -> datetime | None:
    """When the oldest undelivered request was written (ids follow commits closely enough,
    and the primary key answers this without a scan)."""
    query = select(FailedRequest.created_at).order_by(FailedRequest.id).limit(1)
    found: datetime | None = await session.scalar(query)
    return found
