"""The statements of a delivery group (`sync.grouping`), one implementation a backend.

A group runs the same few statements whatever its size: claim many customers, read many
queues, give many claims back, hand a create's new CRM id to the requests behind it, and
record many deliveries. `SessionStatements` runs them through SQLAlchemy (the Core
statements of `sync.repository`, on SQLite; a settle there is `settle_many`, in the
group's transaction). `DriverStatements` runs them on PostgreSQL on the driver's own
connection (asyncpg), each one a prepared statement taking arrays (`= ANY($1)`,
`unnest`); there a group of settles records, gives back and reads in one statement
(`settle_and_read`, in autocommit mode). A group's statement costs one asyncpg call
instead of SQLAlchemy's execution machinery around it: measured on this machine, a group
of looks (claim, read, then release) took 0.74-1.04 ms of the service's CPU through
SQLAlchemy against 0.37-0.47 ms on the driver, and at half the sync-off capacity a
delivery's bookkeeping was most of its cost (`bench/README.md`, step 14).

Both take each group's claims in customer order, so two groups (of this replica or
another) lock the claims they share in the same order.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from customer_service.sync import repository
from customer_service.sync.models import FailedRequest
from customer_service.sync.repository import Settled

# customer id -> (its first requests, oldest first; the CRM id its customer row holds)
Queues = dict[int, tuple[list[FailedRequest], str | None]]


class GroupStatements(Protocol):
    async def claim_many(self, wanted: dict[int, str], now: datetime, lease: float) -> set[int]:
        """Claim each customer under its owner (customer id -> owner); those now ours."""

    async def queues_and_crm_ids(self, customer_ids: list[int]) -> Queues:
        """These customers' queues; a customer with no request is left out."""

    async def learn_crm_ids(self, learnt: dict[int, str]) -> None:
        """Give each customer's requests that lack one the CRM id a create returned."""

    async def release_many(self, owners: list[str]) -> None:
        """Give back the claims held under these owners."""


@dataclass
class SessionStatements:
    """Through an SQLAlchemy session, in its transaction (`sync.repository`)."""

    session: AsyncSession

    async def claim_many(self, wanted: dict[int, str], now: datetime, lease: float) -> set[int]:
        return await repository.claim_many(self.session, wanted, now, lease)

    async def queues_and_crm_ids(self, customer_ids: list[int]) -> Queues:
        return await repository.queues_and_crm_ids(self.session, customer_ids)

    async def settle_many(self, settled: list[Settled]) -> None:
        """Remove the delivered rows and note what the CRM now holds."""
        await repository.settle_many(self.session, settled)

    async def learn_crm_ids(self, learnt: dict[int, str]) -> None:
        await repository.learn_crm_ids(self.session, learnt)

    async def release_many(self, owners: list[str]) -> None:
        await repository.release_many(self.session, owners)


_requests = cast(Table, FailedRequest.__table__)
_COLUMNS = [column.name for column in _requests.columns]

# The same statements as `sync.repository`'s, in PostgreSQL's own SQL. Each is prepared
# once per connection by asyncpg (its statement cache) and takes arrays, so a group of any
# size is one statement each.
CLAIM_MANY = (
    "INSERT INTO sync_claims (customer_id, owner, expires_at)"
    " SELECT wanted.customer_id, wanted.owner, $3"
    " FROM unnest($1::integer[], $2::text[]) AS wanted(customer_id, owner)"
    " ORDER BY wanted.customer_id"
    " ON CONFLICT (customer_id) DO UPDATE"
    " SET owner = excluded.owner, expires_at = excluded.expires_at"
    " WHERE sync_claims.owner = excluded.owner OR sync_claims.expires_at < $4"
    " RETURNING customer_id, owner"
)


def _queue_read(customers: str, limit: str, leaving_out: str = "") -> str:
    """The first `limit` rows of each customer's queue, oldest first, and the CRM id its
    customer row holds: rows straight from the windowed scan of the customers' index
    range, each CRM id by primary key (no join for the planner to turn into a scan of a
    whole table). `leaving_out`: an array of row ids to skip."""
    skip = f" AND id <> ALL({leaving_out}::bigint[])" if leaving_out else ""
    return (
        f"SELECT {', '.join(f'queued.{name}' for name in _COLUMNS)},"
        " (SELECT customers.crm_id FROM customers WHERE customers.id = queued.customer_id)"
        " AS customer_crm_id"
        f" FROM (SELECT {', '.join(_COLUMNS)}, row_number() OVER"
        " (PARTITION BY customer_id ORDER BY id) AS position"
        f" FROM failed_requests WHERE customer_id = ANY({customers}::integer[]){skip})"
        f" AS queued WHERE queued.position <= {limit}"
    )


QUEUES = _queue_read("$1", "$2") + " ORDER BY queued.customer_id, queued.id"
LEARN_CRM_IDS = (
    "UPDATE failed_requests SET crm_id = learnt.crm_id"
    " FROM unnest($1::integer[], $2::text[]) AS learnt(customer_id, crm_id)"
    " WHERE failed_requests.customer_id = learnt.customer_id AND failed_requests.crm_id IS NULL"
)
RELEASE_CLAIMS = "DELETE FROM sync_claims WHERE owner = ANY($1::text[])"
# A group of settles in one statement, in autocommit mode (atomic as a transaction is):
# delete the delivered rows, note what the CRM holds, give back each claim whose queue
# holds nothing else, and read what is left of the queues. Every part reads the snapshot
# the statement started with (a part never sees another's changes), so the parts that
# read leave out the rows being deleted. A claim with rows left is renewed or given back
# apart, as the plan for those rows says (`grouping.GroupCommit._settle_alone`).
SETTLE_AND_READ = (
    "WITH deleted AS (DELETE FROM failed_requests WHERE id = ANY($1::bigint[])),"
    # One settle a customer in a group (one delivery holds a customer's claim at a
    # time), so each customer row meets one entry of the arrays.
    " synced AS (UPDATE customers SET crm_id = noted.crm_id, crm_synced_version = CASE"
    " WHEN customers.crm_synced_version IS NULL"
    " OR customers.crm_synced_version < noted.version THEN noted.version"
    " ELSE customers.crm_synced_version END"
    " FROM unnest($2::integer[], $3::text[], $4::integer[])"
    " AS noted(customer_id, crm_id, version)"
    " WHERE customers.id = noted.customer_id),"
    " released AS (DELETE FROM sync_claims"
    " USING unnest($5::integer[], $6::text[]) AS mine(customer_id, owner)"
    " WHERE sync_claims.customer_id = mine.customer_id AND sync_claims.owner = mine.owner"
    " AND NOT EXISTS (SELECT 1 FROM failed_requests AS left_over"
    " WHERE left_over.customer_id = mine.customer_id AND left_over.id <> ALL($1::bigint[])))"
    f" {_queue_read('$5', '$7', leaving_out='$1')}"
    " ORDER BY queued.customer_id, queued.id"
)


@dataclass
class DriverStatements:
    """On the driver's connection (asyncpg), in whatever transaction it is in (or none:
    each statement then commits on its own)."""

    connection: Any  # asyncpg.Connection: the driver ships no type hints

    async def claim_many(self, wanted: dict[int, str], now: datetime, lease: float) -> set[int]:
        if not wanted:
            return set()
        ordered = sorted(wanted.items())
        rows = await self.connection.fetch(
            CLAIM_MANY,
            [customer_id for customer_id, _ in ordered],
            [owner for _, owner in ordered],
            now + timedelta(seconds=lease),
            now,
        )
        return {row[0] for row in rows if wanted.get(row[0]) == row[1]}

    async def queues_and_crm_ids(self, customer_ids: list[int]) -> Queues:
        return _queues(await self.connection.fetch(QUEUES, customer_ids, repository.QUEUE_LIMIT))

    async def settle_and_read(self, settled: list[Settled], owners: dict[int, str]) -> Queues:
        """Remove the delivered rows and note what the CRM now holds, then give back each
        customer's claim (customer id -> owner) given back
        when nothing is left in its queue, then the queues with something left, each
        with the CRM id its customer now holds: one statement (`SETTLE_AND_READ`)."""
        ids = [row_id for one in settled for row_id in one.row_ids]
        noted = sorted(
            (one.customer_id, one.crm_id, one.version) for one in settled if one.crm_id is not None
        )
        mine = sorted(owners.items())
        records = await self.connection.fetch(
            SETTLE_AND_READ,
            ids,
            [customer_id for customer_id, _, _ in noted],
            [crm_id for _, crm_id, _ in noted],
            [version for _, _, version in noted],
            [customer_id for customer_id, _ in mine],
            [owner for _, owner in mine],
            repository.QUEUE_LIMIT,
        )
        queues = _queues(records)
        # The statement's snapshot predates the CRM ids it noted.
        for customer_id, crm_id, _ in noted:
            if customer_id in queues:
                queues[customer_id] = (queues[customer_id][0], crm_id)
        return queues

    async def learn_crm_ids(self, learnt: dict[int, str]) -> None:
        if learnt:
            await self.connection.execute(LEARN_CRM_IDS, list(learnt), list(learnt.values()))

    async def release_many(self, owners: list[str]) -> None:
        if owners:
            await self.connection.execute(RELEASE_CLAIMS, owners)


def _queues(records: list[Any]) -> Queues:
    """The queues in the rows of `_queue_read`, oldest first."""
    queues: Queues = {}
    for record in records:
        values = tuple(record)
        row = _request(values[:-1])
        queues.setdefault(row.customer_id, ([], values[-1]))[0].append(row)
    return queues


def _request(values: tuple[Any, ...]) -> FailedRequest:
    """A `FailedRequest` from a row of QUEUES, not attached to any session (as the rows
    the group commit reads through SQLAlchemy are detached once it commits)."""
    return FailedRequest(**dict(zip(_COLUMNS, values, strict=True)))
