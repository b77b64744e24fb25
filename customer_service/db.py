"""Database engine, session factory and the metadata every model shares."""

from typing import Any

from sqlalchemy import MetaData, event, make_url
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
        if path in (None, "", ":memory:"):
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
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
    )


def engine_for(settings: Settings) -> AsyncEngine:
    """The process's engine, sized by the database capacity settings."""
    return create_engine(
        settings.database_url,
        settings.database_pool_size,
        settings.database_max_overflow,
        settings.database_pool_timeout_seconds,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
