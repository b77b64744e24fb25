"""Fixtures that run the CRM mock in-process on a temporary SQLite file."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from crm_mock.app import create_app
from crm_mock.config import CrmSettings

StartCrm = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def crm_database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'crm_mock.db'}"


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
async def crm(start_crm: StartCrm) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a running CRM mock without an API token."""
    async with start_crm() as client:
        yield client
