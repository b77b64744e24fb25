"""On PostgreSQL the delivery statements stay lookups by key as the tables grow: a plan
PostgreSQL cached while `customers` was nearly empty must not scan the whole table on
every settle once it holds thousands (`db._plan_for_each_execution`, migration 0008).

Measured from PostgreSQL's own counters: the rows its sequential scans of `customers`
read (`pg_stat_user_tables.seq_tup_read`), counted once every connection of the test is
closed (a backend hands in its counts when it ends)."""

from typing import Any

from outbox_support import customers_with_requests
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from support import FakeConnector, eventually, reset_postgres

from customer_service.config import Settings
from customer_service.db import create_sessionmaker, engines_for
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.outcome import Delivered, Outcome
from customer_service.sync.retry import Urgency

# Customers added once the plans are cached, and the settles made on the grown table.
GROWN = 5_000
SETTLES = 20
# PostgreSQL plans a prepared statement for its parameters five times, then may keep a
# generic plan: more settles than that while the table is small, of batches large enough
# for a plan for their parameters to scan the small table too (so the generic one, a
# scan, looks no worse).
SMALL_SETTLES = 12
SMALL_BATCH = 8


async def _delivered(change: Any) -> Outcome:
    return Delivered(f"crm-{change.customer_id}")


async def _customers_read_by_scans(url: str) -> int:
    """Rows of `customers` read by sequential scans so far, once no other connection to
    the database is open (so every backend has handed in its counts)."""
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:

            async def alone() -> bool:
                others = await connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                        " current_database() AND pid <> pg_backend_pid()"
                    )
                )
                return others == 0

            await eventually(alone, within=10)
            read = await connection.scalar(
                text("SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'customers'")
            )
            return int(read)
    finally:
        await engine.dispose()


async def _settle(
    engine: DeliveryEngine, sessionmaker: Any, batches: int, size: int, name: str
) -> None:
    """`batches` batches of `size` new customers, each delivered and settled."""
    for n in range(batches):
        customers = await customers_with_requests(sessionmaker, size, name=f"{name}{n}x")
        result = await engine.deliver(dict.fromkeys(customers, Urgency.DUE))
        assert result.counts.delivered == size


async def test_settles_on_a_grown_customers_table_never_scan_it_whole(
    postgres_database: str,
) -> None:
    url = postgres_database
    await reset_postgres(url)
    settings = Settings(database_url=url)
    api, sync = engines_for(settings)
    before = await _customers_read_by_scans(url)
    try:
        sessionmaker = create_sessionmaker(sync)
        engine = DeliveryEngine(sessionmaker, FakeConnector(_delivered), settings)
        await _settle(engine, sessionmaker, SMALL_SETTLES, SMALL_BATCH, "Small")
        async with api.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO customers (first_name, last_name, email, email_key, version,"
                    " created_at, updated_at) SELECT 'Grown', 'Plans', 'g' || n || '@example.com',"
                    " 'g' || n || '@example.com', 1, now(), now()"
                    " FROM generate_series(1, :count) AS n"
                ),
                {"count": GROWN},
            )
        await _settle(engine, sessionmaker, SETTLES, 1, "Grown")
    finally:
        await api.dispose()
        await sync.dispose()
    read = await _customers_read_by_scans(url) - before
    # Scans of the small table read a few rows each; one scan of the grown one, GROWN.
    assert read < GROWN, f"sequential scans read {read} rows of customers"
