"""On SQLite (one connection, its calls on the event loop's thread) a delivery transaction
gives the connection back before the loop runs anything else. Closed by `async with`, the
connection stayed checked out for two more turns of the loop (SQLAlchemy closes it in a
task of its own), and under load every API write queued behind the delivery's
transactions, each waiter woken a turn after the one before: Kafka mode's sync lag on
SQLite had its tail there (bench/README). On PostgreSQL a batch's claim (its statements
committing on their own) gives its connection back the same way, before the batch sends."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from support import FakeConnector, reset_postgres

from customer_service.config import Settings
from customer_service.db import create_engine, create_sessionmaker, runs_on_loop_thread
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.outcome import Outcome


async def _never_called(change: object) -> Outcome:
    raise AssertionError(f"no CRM call expected: {change}")


def _engine(tmp_path: Path) -> DeliveryEngine:
    url = f"sqlite+aiosqlite:///{tmp_path / 'customer_service.db'}"
    assert runs_on_loop_thread(url)
    database = create_engine(url)
    settings = Settings(database_url=url)
    delivery = DeliveryEngine(create_sessionmaker(database), FakeConnector(_never_called), settings)
    return delivery


async def test_the_connection_is_back_before_the_loop_runs_anything_else(tmp_path: Path) -> None:
    delivery = _engine(tmp_path)
    pool = delivery.database.pool
    seen: list[int] = []

    async def work(connection: AsyncConnection) -> int:
        await connection.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        await connection.execute(text("INSERT INTO t VALUES (1)"))
        # Runs at the loop's next turn: an API write woken then must find the connection.
        asyncio.get_running_loop().call_soon(lambda: seen.append(pool.checkedout()))
        return 1

    for _ in range(3):
        assert await delivery.transaction(work) == 1
        await asyncio.sleep(0)  # the loop's next turn, if the transaction never yielded
    assert seen == [0, 0, 0]

    async def count(connection: AsyncConnection) -> int:
        return int((await connection.execute(text("SELECT count(*) FROM t"))).scalar_one())

    assert await delivery.transaction(count) == 3  # committed
    await delivery.database.dispose()


async def test_a_failed_transaction_rolls_back_and_gives_the_connection_back(
    tmp_path: Path,
) -> None:
    delivery = _engine(tmp_path)

    async def create(connection: AsyncConnection) -> None:
        await connection.execute(text("CREATE TABLE t (x INTEGER)"))

    async def fail(connection: AsyncConnection) -> None:
        await connection.execute(text("INSERT INTO t VALUES (1)"))
        raise RuntimeError("the settle's judgement failed")

    async def count(connection: AsyncConnection) -> int:
        return int((await connection.execute(text("SELECT count(*) FROM t"))).scalar_one())

    await delivery.transaction(create)
    with pytest.raises(RuntimeError):
        await delivery.transaction(fail)
    assert delivery.database.pool.checkedout() == 0
    assert await delivery.transaction(count) == 0
    await delivery.database.dispose()


@pytest.fixture
async def postgres_delivery(postgres_database: str) -> AsyncIterator[DeliveryEngine]:
    await reset_postgres(postgres_database)
    database = create_engine(postgres_database)
    settings = Settings(database_url=postgres_database)
    yield DeliveryEngine(create_sessionmaker(database), FakeConnector(_never_called), settings)
    await database.dispose()


async def test_on_postgresql_a_claim_gives_its_connection_back_before_the_loop_turns(
    postgres_delivery: DeliveryEngine,
) -> None:
    """A batch's claim (statements committing on their own) is on the path from a write to
    its CRM call: its connection goes back without a round trip or a turn of the loop, so
    the batch goes on to send at once."""
    delivery = postgres_delivery
    pool = delivery.database.pool
    seen: list[int] = []

    async def claim(connection: AsyncConnection) -> int:
        value = int((await connection.execute(text("SELECT 1"))).scalar_one())
        asyncio.get_running_loop().call_soon(lambda: seen.append(pool.checkedout()))
        return value

    for _ in range(3):
        assert await delivery.transaction(claim, autocommit=True) == 1
        await asyncio.sleep(0)
    assert seen == [0, 0, 0]

    # Each statement committed on its own: what one wrote is there, the connection clean.
    async def write(connection: AsyncConnection) -> None:
        await connection.execute(text("CREATE TABLE IF NOT EXISTS autocommit_probe (x INT)"))
        await connection.execute(text("INSERT INTO autocommit_probe VALUES (1)"))
        raise RuntimeError("failed after the insert")

    with pytest.raises(RuntimeError):
        await delivery.transaction(write, autocommit=True)
    assert pool.checkedout() == 0

    async def count(connection: AsyncConnection) -> int:
        found = await connection.execute(text("SELECT count(*) FROM autocommit_probe"))
        return int(found.scalar_one())

    assert await delivery.transaction(count) == 1
    async with delivery.database.begin() as connection:
        await connection.execute(text("DROP TABLE autocommit_probe"))
