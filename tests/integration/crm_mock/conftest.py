"""Fixtures that run the CRM mock in-process, on SQLite and again on PostgreSQL.

As for the rest of the suite, PostgreSQL is required: `TEST_DATABASE_URL` (default
postgresql+asyncpg://postgres@127.0.0.1:5432/test) must answer. The tests use the run's own
database on it (`postgres_database`); only the mock's own `crm_*` tables are dropped there
before each test.
"""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.exc import DBAPIError

from crm_mock import store
from crm_mock.app import create_app
from crm_mock.config import CrmSettings

StartCrm = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def crm_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL with no CRM data in it, on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'crm_mock.db'}"
    # This run's own database (the suite's `postgres_database`): two runs at once never
    # drop each other's tables.
    url = request.getfixturevalue("postgres_database")
    engine = store.create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(store.Base.metadata.drop_all)
    except (OSError, DBAPIError) as error:
        pytest.fail(f"PostgreSQL at {url} is required for the tests and did not answer: {error}")
    finally:
        await engine.dispose()
    return url


@pytest.fixture
def start_crm(crm_database_url: str) -> StartCrm:
    """Start a CRM mock on the test's database file; a client talks to it until the block ends.

    Each call is a fresh app (a restart), on the same file unless told otherwise.
    """

    @asynccontextmanager
    async def start(api_token: str = "") -> AsyncIterator[httpx.AsyncClient]:
        settings = CrmSettings(
            _env_file=None, crm_database_url=crm_database_url, crm_api_token=api_token
        )
        app = create_app(settings)
        async with (
            LifespanManager(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://crm.test"
            ) as client,
        ):
            yield client

    return start


@pytest.fixture
async def crm_api(start_crm: StartCrm) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a running CRM mock without an API token."""
    async with start_crm() as client:
        yield client
