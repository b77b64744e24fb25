"""The CRM mock's tables and every query on them.

The mock is not migrated: `create_tables` makes the tables at start-up if they are missing,
which is all a stand-in for a third party needs. The SQL stays portable between SQLite (the
embedded default) and PostgreSQL.

Functions here only `flush()`; the caller owns the transaction (see `deps.get_session`), except
that an integrity error is rolled back on the spot, because PostgreSQL refuses every further
statement of a transaction that failed.
"""

import asyncio
import sqlite3
from collections.abc import Generator, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast
from uuid import uuid4

import aiosqlite
from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from crm_mock.schemas import CrmCustomerRequest

# The log keeps at least this many of the newest entries (the CRM's contract) ...
REQUEST_LOG_RETENTION = 100_000
# ... and prunes older ones once per this many inserts, so pruning costs little.
REQUEST_LOG_PRUNE_EVERY = 1_000

SQLITE_BUSY_TIMEOUT_MS = 5_000

# Stable constraint names, whatever the backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores no zone itself)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def new_crm_id() -> str:
    """A fresh CRM id; its own namespace, so it can never be mistaken for an external id."""
    return f"crm_{uuid4().hex[:16]}"


class CrmCustomerRecord(Base):
    """A customer as the CRM keeps it."""

    __tablename__ = "crm_customers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(100))
    address: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_crm_customers_created_at_id", "created_at", "id"),)


class IdempotentAnswer(Base):
    """The first answer given to an `Idempotency-Key`, replayed to every repeat of it."""

    __tablename__ = "crm_idempotency"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(Integer)
    # The headers worth replaying (content type, location) as a JSON object, and the body text.
    headers: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RequestLogEntry(Base):
    """One request received on `/api/crm/customers*`, with the status it was answered."""

    __tablename__ = "crm_request_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    external_id: Mapped[str | None] = mapped_column(Text, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    body: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class CustomerNotFound(Exception):
    """No CRM record has this id."""

    def __init__(self, crm_id: str) -> None:
        super().__init__(f"no CRM customer with id {crm_id!r}")
        self.crm_id = crm_id


class ExternalIdTaken(Exception):
    """Another CRM record already carries this external id."""

    def __init__(self, existing: CrmCustomerRecord) -> None:
        super().__init__(
            f"externalId {existing.external_id!r} belongs to CRM customer {existing.id!r}"
        )
        self.existing = existing


def is_sqlite(url: str) -> bool:
    """Whether `url` names an SQLite database."""
    return url.startswith("sqlite")


def create_engine(url: str) -> AsyncEngine:
    """An engine for `url`.

    On SQLite: WAL (readers do not block the writer), a busy timeout, and `BEGIN IMMEDIATE`
    for every transaction. The last matters because a deferred transaction that read first
    cannot upgrade to a writer once another connection has committed (SQLITE_BUSY_SNAPSHOT,
    which no timeout cures); taking the write lock up front makes concurrent requests wait
    their turn instead of failing.
    """
    if not is_sqlite(url):
        return create_async_engine(url, pool_pre_ping=True)

    # One connection: SQLite runs one writer at a time anyway, and waiting in the pool's queue
    # is fair and prompt where SQLite's busy handler polls with growing sleeps (measured with
    # 16 concurrent clients: p99 175 ms against 1.5 s with the default pool, and more
    # throughput). Nothing here holds a session while it opens another, so one is enough;
    # the busy timeout still covers another process on the same file.
    path = make_url(url).database
    if path in (None, "", ":memory:"):
        # An in-memory database lives in its one connection already (SQLAlchemy's StaticPool).
        engine = create_async_engine(url)
    else:

        async def connect() -> aiosqlite.Connection:
            return await _LoopThreadConnection(
                partial(sqlite3.connect, path, check_same_thread=False, isolation_level=None),
                64,
            )

        # No reset (a ROLLBACK) when a connection goes back to the pool: the driver runs in
        # autocommit mode below, so the only transactions are SQLAlchemy's, which it ends
        # itself when a session or connection closes.
        engine = create_async_engine(
            url,
            async_creator=connect,
            pool_size=1,
            max_overflow=0,
            pool_reset_on_return=None,
        )

    @event.listens_for(engine.sync_engine, "connect")
    def _prepare_sqlite(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy (the driver's own BEGIN is deferred). Set
        # only when needed: SQLAlchemy's setter hands the change to aiosqlite's thread, which
        # a `_LoopThreadConnection` (opened with it already) does not have.
        if dbapi_connection.isolation_level is not None:
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # With WAL this still survives a crash of the process; only a power cut may lose the
        # last commits, which a mock can afford for a much faster commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class _LoopThreadConnection(aiosqlite.Connection):
    """aiosqlite's connection, running each SQLite call on the event loop's thread.

    aiosqlite hands every call to a thread of its own and back, which cost the mock more CPU
    than everything else it does: about 0.1 ms a hand-off, three or four hand-offs a
    statement, 1.5 ms of CPU per transaction where SQLite itself needs tens of microseconds
    on a local file in WAL mode with `synchronous=NORMAL` (no fsync at commit). Blocking the
    loop that briefly is cheaper than any hand-off. The price: while another process holds
    the write lock (the Kafka consumer's transactions, a few ms each), SQLite's busy handler
    waits on the loop's thread, so the mock pauses instead of only that request.
    """

    def __await__(self) -> Generator[Any, None, aiosqlite.Connection]:
        return self._connect().__await__()  # no worker thread to start

    async def _connect(self) -> aiosqlite.Connection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    def stop(self) -> asyncio.Future[None] | None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        return None

    async def close(self) -> None:
        self.stop()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def create_tables(engine: AsyncEngine) -> None:
    """Create the mock's tables that do not exist yet (existing data is kept)."""
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)


# --- customers ---------------------------------------------------------------------------


_CUSTOMERS = cast(Table, CrmCustomerRecord.__table__)
_CUSTOMER_COLUMNS = tuple(column.key for column in _CUSTOMERS.columns)
_INSERT_CUSTOMER = insert(_CUSTOMERS)


async def create_customer(session: AsyncSession, request: CrmCustomerRequest) -> CrmCustomerRecord:
    """Insert a record with a fresh CRM id.

    Raises `ExternalIdTaken` with the existing record when the external id is known. The
    insert is tried first and the unique index decides, so two concurrent creates of one
    external id cannot both succeed.
    """
    row = new_customer_row(request)
    record = CrmCustomerRecord(**row)
    try:
        # A Core insert of the record's columns: the ORM's flush of one new object cost
        # more than the rest of the call's SQL (the record is returned, not attached).
        await session.execute(_INSERT_CUSTOMER, row)
    except IntegrityError:
        await session.rollback()
        existing = await find_customer_by_external_id(session, request.external_id)
        if existing is None:
            raise  # not the external id after all: a real error
        raise ExternalIdTaken(existing) from None
    return record


async def get_customer(session: AsyncSession, crm_id: str) -> CrmCustomerRecord:
    """The record with this CRM id; raises `CustomerNotFound`."""
    record = await session.get(CrmCustomerRecord, crm_id)
    if record is None:
        raise CustomerNotFound(crm_id)
    return record


async def find_customer_by_external_id(
    session: AsyncSession, external_id: str
) -> CrmCustomerRecord | None:
    """The record carrying this external id, if any."""
    statement = select(CrmCustomerRecord).where(CrmCustomerRecord.external_id == external_id)
    return (await session.execute(statement)).scalar_one_or_none()


async def find_external_id(session: AsyncSession, crm_id: str) -> str | None:
    """The external id of the record with this CRM id, or None when there is no such record."""
    statement = select(CrmCustomerRecord.external_id).where(CrmCustomerRecord.id == crm_id)
    return (await session.execute(statement)).scalar_one_or_none()


async def replace_customer(
    session: AsyncSession, crm_id: str, request: CrmCustomerRequest
) -> CrmCustomerRecord:
    """Replace every field of a record; raises `CustomerNotFound` or `ExternalIdTaken`."""
    record = await get_customer(session, crm_id)
    _copy_fields(record, request)
    record.updated_at = utc_now()
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        holder = await find_customer_by_external_id(session, request.external_id)
        if holder is None:
            raise
        raise ExternalIdTaken(holder) from None
    return record


async def delete_customer(session: AsyncSession, crm_id: str) -> None:
    """Delete a record; raises `CustomerNotFound`."""
    record = await get_customer(session, crm_id)
    await session.delete(record)
    await session.flush()


async def list_customers(
    session: AsyncSession, *, external_id: str | None, limit: int, offset: int
) -> tuple[Sequence[CrmCustomerRecord], int]:
    """One page of records, oldest first, and the number of records matching the filter."""
    condition = CrmCustomerRecord.external_id == external_id if external_id is not None else None
    page = select(CrmCustomerRecord).order_by(CrmCustomerRecord.created_at, CrmCustomerRecord.id)
    count = select(func.count()).select_from(CrmCustomerRecord)
    if condition is not None:
        page = page.where(condition)
        count = count.where(condition)
    items = (await session.execute(page.limit(limit).offset(offset))).scalars().all()
    total = (await session.execute(count)).scalar_one()
    return items, total


async def find_customers_by_external_ids(
    session: AsyncSession, external_ids: Sequence[str]
) -> dict[str, CrmCustomerRecord]:
    """The records carrying these external ids, by external id (one query)."""
    found = await session.execute(_CUSTOMERS_OF, {"ids": list(external_ids)})
    return {record.external_id: record for record in found.scalars().all()}


# Built once (see `find_idempotent_answer`).
_CUSTOMERS_OF = select(CrmCustomerRecord).where(
    CrmCustomerRecord.external_id.in_(bindparam("ids", expanding=True))
)


# A batch upsert that meets a record created meanwhile by another transaction (PostgreSQL;
# SQLite's transactions take the write lock up front) reads the records again, this often.
UPSERT_ATTEMPTS = 3


async def upsert_customers(
    session: AsyncSession, requests: Sequence[CrmCustomerRequest]
) -> list[tuple[CrmCustomerRecord, bool]]:
    """Create or replace a record per request, by external id (each external id at most once
    in `requests`): the records in the order of the requests, each with whether it is new.

    A new record gets a fresh CRM id, as `create_customer` gives; a known one has every field
    replaced and `updatedAt` renewed, as `replace_customer` does. One query reads the known
    records, one statement inserts the new ones, one flush updates the others. When another
    transaction created one of the external ids between the read and the insert, the
    transaction is rolled back and the batch read and applied again.
    """
    external_ids = [request.external_id for request in requests]
    attempt = 0
    while True:
        attempt += 1
        known = await find_customers_by_external_ids(session, external_ids)
        applied: list[tuple[CrmCustomerRecord, bool]] = []
        new_records = []
        for request in requests:
            record = known.get(request.external_id)
            if record is None:
                record = new_customer(request)
                new_records.append(record)
                applied.append((record, True))
            else:
                overwrite_customer(record, request)
                applied.append((record, False))
        try:
            await insert_new_customers(session, new_records)
            await session.flush()
        except IntegrityError:
            await session.rollback()
            if attempt == UPSERT_ATTEMPTS:
                raise
            continue
        return applied


async def find_external_ids(session: AsyncSession, crm_ids: Sequence[str]) -> dict[str, str]:
    """The external ids of the records with these CRM ids, by CRM id (unknown ids left out)."""
    found = await session.execute(_EXTERNAL_IDS_OF, {"ids": list(crm_ids)})
    return {crm_id: external_id for crm_id, external_id in found.tuples()}


async def delete_customers(session: AsyncSession, crm_ids: Sequence[str]) -> set[str]:
    """Delete the records with these CRM ids in one statement; the ids of those deleted."""
    deleted = await session.execute(_DELETE_CUSTOMERS, {"ids": list(crm_ids)})
    return set(deleted.scalars().all())


# Built once (see `find_idempotent_answer`).
_EXTERNAL_IDS_OF = select(_CUSTOMERS.c.id, _CUSTOMERS.c.external_id).where(
    _CUSTOMERS.c.id.in_(bindparam("ids", expanding=True))
)
_DELETE_CUSTOMERS = (
    sql_delete(_CUSTOMERS)
    .where(_CUSTOMERS.c.id.in_(bindparam("ids", expanding=True)))
    .returning(_CUSTOMERS.c.id)
)


_CUSTOMER_ROWS_OF = select(_CUSTOMERS).where(
    _CUSTOMERS.c.external_id.in_(bindparam("ids", expanding=True))
)
# The columns set come from the rows given, the record's id as `b_id`.
_UPDATE_CUSTOMER_ROWS = update(_CUSTOMERS).where(_CUSTOMERS.c.id == bindparam("b_id"))


def customer_rows_of(
    connection: Connection, external_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """`find_customers_by_external_ids` as plain rows, on a sync connection."""
    found = connection.execute(_CUSTOMER_ROWS_OF, {"ids": list(external_ids)}).mappings()
    return {row["external_id"]: dict(row) for row in found}


def write_customer_rows(
    connection: Connection,
    *,
    deleted: Sequence[str],
    inserted: Sequence[dict[str, Any]],
    updated: Sequence[dict[str, Any]],
) -> None:
    """Delete records by CRM id, insert rows, update rows (each every column but the id,
    and the id as `b_id`): one statement each, the deletes first (a row inserted may take
    a deleted one's external id)."""
    if deleted:
        connection.execute(_DELETE_CUSTOMERS, {"ids": list(deleted)})
    if inserted:
        connection.execute(_INSERT_CUSTOMER, list(inserted))
    if updated:
        connection.execute(_UPDATE_CUSTOMER_ROWS, list(updated))


def new_customer_row(request: CrmCustomerRequest) -> dict[str, Any]:
    """A new record's columns: a fresh CRM id, the request's fields, created now."""
    now = utc_now()
    return {"id": new_crm_id(), **customer_fields(request), "created_at": now, "updated_at": now}


def new_customer(request: CrmCustomerRequest) -> CrmCustomerRecord:
    """A record with a fresh CRM id, not added to a session: the caller inserts many at
    once (`insert_new_customers`)."""
    return CrmCustomerRecord(**new_customer_row(request))


async def insert_new_customers(session: AsyncSession, records: Sequence[CrmCustomerRecord]) -> None:
    """Insert records made by `new_customer` in one Core statement, as `create_customer`
    does one: the ORM's flush of new objects cost more than the rest of the SQL. They stay
    unattached (a later change to one is not written)."""
    if records:
        rows = [{column: getattr(r, column) for column in _CUSTOMER_COLUMNS} for r in records]
        await session.execute(_INSERT_CUSTOMER, rows)


def overwrite_customer(record: CrmCustomerRecord, request: CrmCustomerRequest) -> None:
    """Replace every field of a loaded record, without a flush (see `replace_customer`)."""
    _copy_fields(record, request)
    record.updated_at = utc_now()


def customer_fields(request: CrmCustomerRequest) -> dict[str, Any]:
    """A record's columns that a create or a replace sets from the request."""
    return {
        "external_id": request.external_id,
        "first_name": request.first_name,
        "last_name": request.last_name,
        "email": request.email,
        "phone": request.phone,
        "address": request.address,
    }


def _copy_fields(record: CrmCustomerRecord, request: CrmCustomerRequest) -> None:
    for column, value in customer_fields(request).items():
        setattr(record, column, value)


# --- idempotency ---------------------------------------------------------------------------

_ANSWERS = cast(Table, IdempotentAnswer.__table__)
_FIND_ANSWER = select(_ANSWERS).where(_ANSWERS.c.key == bindparam("key"))


async def find_idempotent_answer(session: AsyncSession, key: str) -> IdempotentAnswer | None:
    """The answer first given to this `Idempotency-Key`, if any (not attached to `session`).

    A Core statement built once: the ORM's `get` built and keyed a new one on every call,
    a sixth of the mock's CPU for a look-up that almost always finds nothing.
    """
    row = (await session.execute(_FIND_ANSWER, {"key": key})).one_or_none()
    return None if row is None else IdempotentAnswer(**row._asdict())


async def save_idempotent_answer(session: AsyncSession, answer: IdempotentAnswer) -> bool:
    """Keep the first answer to a key; False when one was kept already (the first one wins)."""
    session.add(answer)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        return False
    return True


async def keep_idempotent_answers(
    session: AsyncSession, answers: Sequence[IdempotentAnswer]
) -> None:
    """Keep many first answers in one statement; a key kept already keeps its first answer."""
    if not answers:
        return
    rows = [{column: getattr(answer, column) for column in _ANSWER_COLUMNS} for answer in answers]
    await session.execute(_KEEP_ANSWER, rows)


_ANSWER_COLUMNS = ("key", "method", "path", "status_code", "headers", "body", "created_at")
# Text, the same on SQLite and PostgreSQL: the dialects' `on_conflict_do_nothing` has no
# cache key, so SQLAlchemy compiled it anew on every call (a twentieth of the mock's CPU
# at a steady load).
_KEEP_ANSWER = text(
    f"INSERT INTO {_ANSWERS.name} ("
    + ", ".join(f'"{c}"' for c in _ANSWER_COLUMNS)
    + ") VALUES ("
    + ", ".join(f":{c}" for c in _ANSWER_COLUMNS)
    + ') ON CONFLICT ("key") DO NOTHING'
).bindparams(*(bindparam(c, type_=_ANSWERS.c[c].type) for c in _ANSWER_COLUMNS))


# --- request log ---------------------------------------------------------------------------


async def append_request_log(
    session: AsyncSession,
    entry: RequestLogEntry,
    *,
    retention: int = REQUEST_LOG_RETENTION,
    prune_every: int = REQUEST_LOG_PRUNE_EVERY,
) -> None:
    """Append an entry, and now and then drop the entries older than the newest `retention`."""
    session.add(entry)
    await session.flush()
    # Keyed on the id rather than an in-memory counter, so it holds across restarts and
    # processes; a gap in the ids only delays a prune.
    if (last := _pruned_up_to([entry.id], retention, prune_every)) is not None:
        await session.execute(_PRUNE_LOG, {"last": last})


async def append_request_log_entries(
    session: AsyncSession,
    entries: Sequence[RequestLogEntry],
    *,
    retention: int = REQUEST_LOG_RETENTION,
    prune_every: int = REQUEST_LOG_PRUNE_EVERY,
) -> None:
    """Append many entries in one statement, pruning as `append_request_log` does: when an
    id given to one of them is a multiple of `prune_every`."""
    if not entries:
        return
    rows = [{column: getattr(entry, column) for column in _LOG_COLUMNS} for entry in entries]
    ids = (await session.execute(_INSERT_LOG, rows)).scalars().all()
    if (last := _pruned_up_to(ids, retention, prune_every)) is not None:
        await session.execute(_PRUNE_LOG, {"last": last})


_LOG = cast(Table, RequestLogEntry.__table__)
_INSERT_LOG = insert(_LOG).returning(_LOG.c.id)
_PRUNE_LOG = sql_delete(_LOG).where(_LOG.c.id <= bindparam("last"))


def insert_log_rows(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """`append_request_log_entries` for rows of `_LOG_COLUMNS`, on a sync connection."""
    if not rows:
        return
    ids = connection.execute(_INSERT_LOG, rows).scalars().all()
    last = _pruned_up_to(ids, REQUEST_LOG_RETENTION, REQUEST_LOG_PRUNE_EVERY)
    if last is not None:
        connection.execute(_PRUNE_LOG, {"last": last})


def _pruned_up_to(ids: Sequence[int], retention: int, prune_every: int) -> int | None:
    """The last id to prune after inserting entries with these ids: None unless one of them
    is a multiple of `prune_every` (see `append_request_log`)."""
    if any(entry_id % prune_every == 0 for entry_id in ids):
        return max(ids) - retention
    return None


_LOG_COLUMNS = (
    "method",
    "path",
    "status",
    "external_id",
    "idempotency_key",
    "body",
    "received_at",
)


async def list_request_log(
    session: AsyncSession, *, external_id: str | None, limit: int
) -> tuple[list[RequestLogEntry], int]:
    """The newest `limit` matching entries, oldest first, and the number of matching entries."""
    newest_first = select(RequestLogEntry).order_by(
        RequestLogEntry.received_at.desc(), RequestLogEntry.id.desc()
    )
    count = select(func.count()).select_from(RequestLogEntry)
    if external_id is not None:
        newest_first = newest_first.where(RequestLogEntry.external_id == external_id)
        count = count.where(RequestLogEntry.external_id == external_id)
    items = list((await session.execute(newest_first.limit(limit))).scalars().all())
    items.reverse()
    total = (await session.execute(count)).scalar_one()
    return items, total
