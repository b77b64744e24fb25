"""A pooled PostgreSQL connection the server closed while it sat idle (a restart, a
failover, an idle timeout) is replaced before a request gets it: the request succeeds."""

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from support import LiveServer, eventually, reset_postgres

from customer_service import db
from customer_service.app import create_app
from customer_service.config import Settings

ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}


async def _close_other_connections(url: str) -> int:
    """Terminate every other backend on this database; how many there were."""
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            closed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            return int(closed or 0)
    finally:
        await admin.dispose()


@contextlib.asynccontextmanager
async def _service(
    url: str, crm: LiveServer, monkeypatch: pytest.MonkeyPatch, ping_after_idle: float
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The service on a clean PostgreSQL database, pinging connections idle longer than
    `ping_after_idle` seconds."""
    await reset_postgres(url)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", ping_after_idle)
    settings = Settings(database_url=url, crm_base_url=crm.url, retry_interval_seconds=3600)
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as http:
            yield app, http


async def test_an_idle_connection_closed_by_the_server_is_replaced_unseen(
    postgres_database: str, crm: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any idle time counts (the test's requests follow each other within milliseconds).
    async with _service(postgres_database, crm, monkeypatch, 0.0) as (app, http):
        created = await http.post("/api/customers", json=ADA)
        assert created.status_code == 201, created.text

        async def synced() -> bool:
            body = (await http.get(created.headers["Location"])).json()
            return bool(body["crm"]["status"] == "synced")

        await eventually(synced, within=10)
        pool = app.state.engine.pool
        assert pool.checkedin() >= 1  # pooled, idle
        assert await _close_other_connections(postgres_database) >= 1
        for _ in range(3):  # each request gets a working connection
            answer = await http.get(created.headers["Location"])
            assert answer.status_code == 200, answer.text
        listed = await http.get("/api/customers")
        assert listed.status_code == 200 and listed.json()["total"] == 1


async def test_connections_closed_by_the_server_never_make_a_500_even_unpinged(
    postgres_database: str, crm: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the ping (a connection in steady use is not pinged), a connection the
    server closed is replaced when the driver has seen it close; one used before that
    answers 503 problem+json (asyncpg can report it as an internal client error), never
    500. Run a few rounds: which of the two happens depends on timing."""
    async with _service(postgres_database, crm, monkeypatch, 3600.0) as (_, http):
        for _ in range(5):
            assert (await http.get("/api/customers")).status_code == 200
            assert await _close_other_connections(postgres_database) >= 1
            statuses = [(await http.get("/api/customers")).status_code for _ in range(3)]
            assert set(statuses) <= {200, 503}, statuses
            assert statuses[-1] == 200, statuses
