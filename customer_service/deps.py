"""FastAPI dependencies: one transaction per request, the settings, the API key."""

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from customer_service.config import Settings
from customer_service.errors import Unauthorized
from customer_service.schemas import INT32_MAX, INT64_MAX
from customer_service.sync.outbox import PENDING_KICKS


class ApiLoad:
    """The API's transactions under way: how busy the API is, for the delivery engine
    (`sync.engine`, which gathers kicks into fewer batches under a saturating load)."""

    def __init__(self) -> None:
        self.transactions = 0

    def __call__(self) -> int:
        return self.transactions


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's transaction: committed when the handler returns, rolled back if it
    raises. Once committed, the outbox rows it wrote are handed to the delivery engine."""
    state = request.app.state
    load: ApiLoad = state.api_load
    async with state.sessionmaker() as session:
        load.transactions += 1
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
        finally:
            load.transactions -= 1
        # Kicked at once: the session's close after the commit (a shielded task of
        # SQLAlchemy's, with no connection left to give back) takes three turns of the
        # event loop, which every write's sync lag paid before its delivery could start.
        kicks = session.info.pop(PENDING_KICKS, None)
        if kicks:
            state.delivery.kick(sorted(kicks))


async def get_settings(request: Request) -> Settings:
    # async: FastAPI runs a plain-function dependency in its threadpool, a thread hand-off
    # on every request.
    settings: Settings = request.app.state.settings
    return settings


# scope="function": the commit happens before the response is sent, so a client that
# got 201 can read its write back at once.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CustomerId = Annotated[int, Path(ge=1, le=INT32_MAX)]
RequestId = Annotated[int, Path(ge=1, le=INT64_MAX)]


async def require_api_key(
    settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None
) -> None:
    """When `API_KEY` is set, every /api call must carry it in `X-API-Key`."""
    if not settings.api_key:
        return
    if x_api_key is None or not secrets.compare_digest(x_api_key, settings.api_key):
        raise Unauthorized("a valid X-API-Key header is required")
