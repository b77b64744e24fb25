"""Database engine, session factory and the metadata every model shares."""

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL, MetaData, event, exc, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from customer_service import sqlite_driver
from customer_service.config import Settings

# Stable constraint names, so migrations can name what they alter.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def runs_on_loop_thread(url: str | URL) -> bool:
    """Whether `create_engine(url)` runs the database's calls on the event loop's thread
    (SQLite on a file, `sqlite_driver`): a statement, a commit and a connection's return
    to the pool then never suspend the task that makes them."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")


def create_engine(
    url: str, pool_size: int = 10, max_overflow: int = 5, pool_timeout: float = 5.0
) -> AsyncEngine:
    """An engine for `url`, with at most `pool_size + max_overflow` connections; a caller
    that waits `pool_timeout` seconds for one gets `sqlalchemy.exc.TimeoutError` (the API
    answers 503). SQLite gets WAL and a busy timeout so API and retries share it."""
    if is_sqlite(url):
        # One connection: SQLite has one writer anyway, and waiting in the pool wakes up at
        # once where SQLite's busy handler would sleep and poll. Transactions are short (no
        # CRM call inside one), so the wait is a queue of milliseconds, not a lock.
        path = make_url(url).database
        if path is None or not runs_on_loop_thread(url):
            engine = create_async_engine(url, connect_args={"timeout": 30})
        else:
            # SQLite's calls run on the loop's thread (`sqlite_driver` says why and at what
            # price).
            engine = create_async_engine(
                url,
                async_creator=sqlite_driver.connector(path, timeout=30),
                pool_size=1,
                max_overflow=0,
                pool_timeout=pool_timeout,
            )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    engine = create_async_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout
    )
    _ping_after_idle(engine)
    return engine


# A pooled connection idle for longer than this is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_after_idle(engine: AsyncEngine) -> None:
    """SQLAlchemy's `pool_pre_ping`, but only for a connection that sat idle in the pool.

    The stock pre-ping costs three round trips on asyncpg (BEGIN, a ping, ROLLBACK) on
    every checkout: more than the rest of an API write's work, and a quarter of a
    delivery group's round trips. A connection in steady use was just seen working; one
    left idle (a database restart or failover may have closed it meanwhile) is pinged,
    and replaced when the ping fails, so the request never sees it; one the driver has
    seen closed is replaced without a ping. A connection that dies while in use fails
    its request (503), as it would with the stock pre-ping."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None and driver.is_closed():
            # Seen closed already (the server said goodbye): no round trip needed.
            raise exc.DisconnectionError("a pooled connection was closed by the server")
        if since is None or time.monotonic() - since <= PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            # The pool drops this connection and checks out another (a new one if need be).
            raise exc.DisconnectionError(f"a pooled connection was closed: {error}") from error


def engine_for(settings: Settings) -> AsyncEngine:
    """The process's engine, sized by the database capacity settings (the CLI's commands
    and migrations; the running service splits it, see `engines_for`)."""
    return create_engine(
        settings.database_url,
        settings.database_pool_size,
        settings.database_max_overflow,
        settings.database_pool_timeout_seconds,
    )


@dataclass(frozen=True)
class PoolSplit:
    api_pool_size: int
    api_max_overflow: int
    sync_pool_size: int


def pool_split(pool_size: int, max_overflow: int, sync_connections: int) -> PoolSplit:
    """How a process's `pool_size + max_overflow` connections are shared between the API
    and the background sync engine: `sync_connections` are the sync engine's alone (a pool
    of their own, no overflow), the rest the API's, kept open up to `pool_size` and opened
    beyond it only at a peak. The total never grows."""
    total = pool_size + max_overflow
    api = total - sync_connections
    api_pool = min(pool_size, api)
    return PoolSplit(api_pool, api - api_pool, sync_connections)


def engines_for(settings: Settings) -> tuple[AsyncEngine, AsyncEngine]:
    """The running service's two engines, the API's and the sync engine's.

    On PostgreSQL they are two pools (`pool_split`): the API's calls can no longer take
    every connection while a delivery waits behind them for one (under a steady load of
    writes, a loop monitor saw the API holding all 15 while the deliveries of those
    writes queued for the pool; bench/README, step 17). SQLite has one writer and one
    connection, so both are the same engine. So is an API-only process
    (`SYNC_ENABLED=false`): it delivers nothing in the background, so the whole pool is
    the API's (an operator's retry pass there shares it).
    """
    if is_sqlite(settings.database_url) or not settings.sync_enabled:
        engine = engine_for(settings)
        return engine, engine
    split = pool_split(
        settings.database_pool_size,
        settings.database_max_overflow,
        settings.sync_database_connections,
    )
    timeout = settings.database_pool_timeout_seconds
    api = create_engine(settings.database_url, split.api_pool_size, split.api_max_overflow, timeout)
    sync = create_engine(settings.database_url, split.sync_pool_size, 0, timeout)
    _plan_for_each_execution(sync)
    return api, sync


# PostgreSQL: plan each execution of a prepared statement for its own parameters.
CUSTOM_PLANS = "SET plan_cache_mode = force_custom_plan"


def _plan_for_each_execution(engine: AsyncEngine) -> None:
    """The sync engine's connections plan every statement for its parameters and the
    tables as they are now, never with a plan cached from when they were smaller.

    asyncpg prepares every statement once per connection, and after five executions
    PostgreSQL may keep one generic plan for it. The settle's update of `customers`
    (`WHERE id = ANY(...)`) got its generic plan while the table was nearly empty, a
    sequential scan, and kept it as the table grew: at 12,000 customers each settle read
    all of them (1.3 ms against 0.2 ms planned for its parameters; bench/README,
    2026-12-07). Fresh statistics (autovacuum's ANALYZE) would have made PostgreSQL plan
    it again, but nothing may be assumed of them. The delivery statements run once per
    batch, so planning each costs little; the batch's claim keeps cached plans (its
    function's own setting, migration 0008: its statements look customers up by key).
    Kafka mode's status reader shares the pool, and its two statements a status are
    planned each time too (about 0.04 ms of PostgreSQL's CPU a status). The API's engine
    keeps the default: its statements are the same few per write."""

    @event.listens_for(engine.sync_engine, "connect")
    def _custom_plans(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.run_async(lambda connection: connection.execute(CUSTOM_PLANS))


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
