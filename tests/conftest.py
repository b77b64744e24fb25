"""Shared fixtures: every database test runs on SQLite and again on PostgreSQL.

PostgreSQL is required, not optional: `TEST_DATABASE_URL` (default
postgresql+asyncpg://postgres@127.0.0.1:5432/test) must answer, or the PostgreSQL
variants fail. The schema is built by the alembic migrations, as in production.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from kafka_support import Broker, running_broker
from sqlalchemy.ext.asyncio import AsyncEngine
from support import (
    CrmControl,
    LiveServer,
    create_database,
    drop_database,
    free_port,
    live,
    postgres_url,
    reset_postgres,
)

from crm_mock.app import create_app as create_crm_app
from crm_mock.config import CrmSettings
from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.db import create_engine
from customer_service.migrate import migrate

T = TypeVar("T")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """This run's own database on the PostgreSQL server (so runs never share tables),
    migrated once; dropped at the end."""
    server = postgres_url()
    name = f"crm_sync_test_{os.getpid()}"
    try:
        url = _run_aside(create_database(server, name))
    except (OSError, ConnectionError) as exc:
        pytest.fail(f"PostgreSQL at {server} is required for the tests and did not answer: {exc}")
    _run_aside(migrate(url))
    yield url
    _run_aside(drop_database(server, name))


def _run_aside(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to the end on its own loop in a thread (a test's loop may be running)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, work).result()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty customer-service database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'customer_service.db'}"
        await migrate(url)
        return url
    url = request.getfixturevalue("postgres_database")
    await reset_postgres(url)
    return str(url)


@pytest.fixture
async def crm(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """The real CRM mock on a loopback port, with its own SQLite store."""
    settings = CrmSettings(crm_database_url=f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}")
    async with live(LiveServer(lambda: create_crm_app(settings))) as server:
        yield server


@pytest.fixture
async def crm_control(crm: LiveServer) -> AsyncIterator[CrmControl]:
    control = CrmControl(crm.url)
    yield control
    await control.close()


@pytest.fixture
async def sql_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the service's own on the test's database (tests that work on tables)."""
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def postgres_engine(postgres_database: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the service's own on the run's PostgreSQL database, emptied (tests of
    what only PostgreSQL does: locks, its functions)."""
    await reset_postgres(postgres_database)
    engine = create_engine(postgres_database)
    yield engine
    await engine.dispose()


@pytest.fixture
def make_settings(database_url: str, crm: LiveServer) -> Callable[..., Settings]:
    """Settings for the service under test: the periodic job is slow unless a test says."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "crm_base_url": crm.url,
            "crm_timeout_seconds": 2.0,
            "retry_interval_seconds": 3600,
            "recovery_probe_seconds": 3600,
            # Long backoff: a failed request waits for the test's own retry pass.
            "retry_backoff_base_seconds": 30,
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
async def service_app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    app = create_app(make_settings(), run_scheduler=False)
    async with LifespanManager(app):
        yield app


@pytest.fixture
async def client(service_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The customer service in process (ASGI), talking to the live CRM mock."""
    transport = httpx.ASGITransport(app=service_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
        yield http


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    """One real Kafka-protocol broker (Tansu, memory storage) for the run; each test keeps
    to topics of its own (`kafka_support.Topics`)."""
    with running_broker() as broker:
        yield broker
