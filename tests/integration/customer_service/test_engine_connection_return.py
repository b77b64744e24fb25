"""On SQLite (one connection, its calls on the event loop's thread) a delivery transaction
gives the connection back before the loop runs anything else. Closed by `async with`, the
connection stayed checked out for two more turns of the loop (SQLAlchemy closes it in a
task of its own), and under load every API write queued behind the delivery's
transactions, each waiter woken a turn after the one before: Kafka mode's sync lag on
SQLite had its tail there (bench/README)."""

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from support import FakeConnector

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
