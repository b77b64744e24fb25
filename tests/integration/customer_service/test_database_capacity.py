"""Database capacity: a database that refuses or runs out of connections answers 503
problem+json with Retry-After and writes nothing half; the sync engine keeps to its
share of the pool."""

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import make_url, text
from sqlalchemy.exc import TimeoutError as TimeoutError_
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from support import LiveServer

from customer_service.app import create_app
from customer_service.config import Settings

ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}


def _unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["status"] == 503


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            yield http


async def _hold(held: AsyncExitStack, engine: Any, count: int) -> None:
    """Check out `count` of `engine`'s connections, each used once, until `held` closes."""
    for _ in range(count):
        connection: AsyncConnection = await held.enter_async_context(engine.connect())
        await connection.execute(text("SELECT 1"))


async def _count(url: str, table: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
    finally:
        await engine.dispose()


async def test_pool_exhausted_answers_503_with_retry_after_and_writes_nothing(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    settings = make_settings(
        database_pool_size=2,
        database_max_overflow=0,
        database_pool_timeout_seconds=0.3,
        sync_database_connections=1,
    )
    app = create_app(settings, run_scheduler=False)
    async with _client(app) as http, AsyncExitStack() as held:
        # Take every connection the API has: SQLite's one; on PostgreSQL the pool's two
        # less the sync engine's one, which is a pool of its own.
        await _hold(held, app.state.engine, 1)
        _unavailable(await http.post("/api/customers", json=ADA))
        _unavailable(await http.get("/api/customers"))
    assert await _count(database_url, "customers") == 0
    assert await _count(database_url, "failed_requests") == 0


@pytest.fixture
async def limited_role_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The test database, reached as a role PostgreSQL lets open one connection only."""
    url = request.getfixturevalue("postgres_database")
    role = f"crm_sync_limited_{os.getpid()}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
            await conn.execute(text(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1'))
            await conn.execute(text(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"'))
            await conn.execute(text(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"'))
            await conn.execute(text("TRUNCATE customers, failed_requests, sync_claims"))
        yield make_url(url).set(username=role).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
            await conn.execute(text(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{role}"'))
            await conn.execute(text(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM "{role}"'))
            await conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        await admin.dispose()


async def test_postgres_refusing_connections_answers_503_and_writes_nothing(
    limited_role_url: str, postgres_database: str, crm: LiveServer
) -> None:
    """PostgreSQL says "too many connections": the API answers 503, never 500; once a
    connection is free again the same write succeeds, whole."""
    other = create_async_engine(limited_role_url)
    settings = Settings(
        database_url=limited_role_url, crm_base_url=crm.url, retry_interval_seconds=3600
    )
    app = create_app(settings, run_scheduler=False)
    try:
        async with _client(app) as http:
            async with other.connect() as hog:  # the role's only connection
                await hog.execute(text("SELECT 1"))
                _unavailable(await http.post("/api/customers", json=ADA))
                _unavailable(await http.get("/api/customers/1"))
                assert (await http.get("/ready")).status_code == 503
            await other.dispose()
            assert await _count(postgres_database, "customers") == 0
            assert await _count(postgres_database, "failed_requests") == 0
            created = await http.post("/api/customers", json=ADA)
            assert created.status_code == 201, created.text
    finally:
        await other.dispose()
    assert await _count(postgres_database, "customers") == 1


async def test_background_transactions_keep_to_their_share_and_survive_cancellation(
    make_settings: Callable[..., Settings],
) -> None:
    """`BackgroundDatabase` never holds more than its slots, and a caller cancelled in
    the middle of a transaction leaves it to commit and give its connection back."""
    from customer_service.sync.dbwork import BackgroundDatabase

    settings = make_settings()
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        db = BackgroundDatabase(app.state.sessionmaker, slots=1)
        inside = 0
        most = 0
        release = asyncio.Event()

        async def work(session: Any) -> int:
            nonlocal inside, most
            inside += 1
            most = max(most, inside)
            await session.execute(text("SELECT 1"))
            await release.wait()
            inside -= 1
            return 1

        callers = [asyncio.create_task(db.run(work)) for _ in range(4)]
        await asyncio.sleep(0.05)
        callers[0].cancel()  # cancelled while its transaction is open
        release.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        await db.drain()
        assert most == 1
        assert isinstance(results[0], asyncio.CancelledError)
        assert results[1:] == [1, 1, 1]
        assert app.state.engine.pool.checkedout() == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_sync_engine_has_connections_of_its_own_while_the_api_holds_all_of_its(
    make_settings: Callable[..., Settings],
) -> None:
    """PostgreSQL: the sync engine's connections are a pool of their own, so a burst of
    API calls holding every connection the API may have never makes a delivery wait for
    one (with one shared pool this delivery's transaction timed out behind them), and the
    total stays within pool + overflow."""
    settings = make_settings(
        database_pool_size=3,
        database_max_overflow=1,
        database_pool_timeout_seconds=0.5,
        sync_database_connections=2,
    )
    app = create_app(settings, run_scheduler=False)
    async with _client(app), AsyncExitStack() as held:
        api = app.state.engine
        await _hold(held, api, 2)  # 3 + 1 - 2: every connection the API may open

        async def work(session: Any) -> int:
            return int((await session.execute(text("SELECT 1"))).scalar_one())

        delivery = app.state.delivery
        assert await asyncio.gather(*(delivery.transaction(work) for _ in range(3))) == [1, 1, 1]
        sync = delivery.database
        assert sync is not api
        assert api.pool.size() + api.pool._max_overflow == 2
        assert sync.pool.size() + sync.pool._max_overflow == 2
        # The API's pool stays exhausted: its next call still answers 503.
        with pytest.raises(TimeoutError_):
            async with api.connect():
                pass


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_api_only_process_gives_its_api_the_whole_pool(
    make_settings: Callable[..., Settings],
) -> None:
    """PostgreSQL, `SYNC_ENABLED=false`: nothing is delivered in the background, so no
    connection is kept back for it; the API may open every one of pool + overflow (with a
    split pool it had 2 of these 4, and its third call timed out)."""
    settings = make_settings(
        database_pool_size=3,
        database_max_overflow=1,
        database_pool_timeout_seconds=0.5,
        sync_database_connections=2,
        sync_enabled=False,
    )
    app = create_app(settings, run_scheduler=False)
    async with _client(app), AsyncExitStack() as held:
        api = app.state.engine
        await _hold(held, api, 4)
        assert app.state.delivery.database is api
        with pytest.raises(TimeoutError_):
            async with api.connect():
                pass
