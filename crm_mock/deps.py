"""What a request handler needs from the running app, as `Annotated` dependencies."""

import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from crm_mock.config import CrmSettings
from crm_mock.faults import FaultSettings, RateWindow
from crm_mock.journal import Journal
from crm_mock.locks import KeyedLocks


@dataclass
class CrmRuntime:
    """Everything the lifespan sets up, kept on `app.state.runtime`.

    `faults` is replaced whole by `PUT /api/crm/_faults`; it lives in memory only, so a
    restart of the mock brings back a healthy CRM.
    """

    settings: CrmSettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    faults: FaultSettings = field(default_factory=FaultSettings)
    idempotency_locks: KeyedLocks = field(default_factory=KeyedLocks)
    rng: random.Random = field(default_factory=random.Random)
    rate_window: RateWindow = field(default_factory=RateWindow)
    # Calls being answered now (received whole, no answer sent yet), of the mock's own API
    # and of its faces alike, by method and path: `GET /api/crm/_calls`.
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Request-log entries and idempotent answers, written in groups (`journal` module).
    journal: Journal = field(init=False)

    def __post_init__(self) -> None:
        self.journal = Journal(self.sessionmaker)

    @property
    def calls_in_flight(self) -> int:
        """How many calls are being answered now (with others under way, a trace joins the
        journal's group)."""
        return self.calls.total()

    @contextmanager
    def answering(self, method: str, path: str) -> Iterator[None]:
        """Count a call as in flight while it is being answered."""
        route = (method, path)
        self.calls[route] += 1
        try:
            yield
        finally:
            self.calls[route] -= 1
            if not self.calls[route]:
                del self.calls[route]


def runtime_of(app: Starlette) -> CrmRuntime:
    """The runtime of a started app; fails loudly if the lifespan has not run."""
    runtime = getattr(app.state, "runtime", None)
    if not isinstance(runtime, CrmRuntime):
        raise RuntimeError("the CRM mock is not started: its lifespan has not run")
    return runtime


async def get_runtime(request: Request) -> CrmRuntime:
    """Dependency: the runtime of the app serving the request.

    Async although it awaits nothing: FastAPI runs a plain function dependency in a worker
    thread, a hand-off per request that cost more than the whole lookup.
    """
    return runtime_of(request.app)


RuntimeDep = Annotated[CrmRuntime, Depends(get_runtime)]


# The ASGI scope key under which the gateway hands a call its own session (and transaction).
CALL_SESSION = "crm_mock.session"
# ... and, for a batch call, a list the endpoint fills with each record's own status, in
# the order of the batch, for the request log (one entry a record).
CALL_RECORD_STATUSES = "crm_mock.record_statuses"


def report_record_statuses(request: Request, statuses: list[int]) -> None:
    """Hand the gateway a batch call's per-record statuses (nothing when it asked for none)."""
    sink = request.scope.get(CALL_RECORD_STATUSES)
    if isinstance(sink, list):
        sink.extend(statuses)


async def get_session(runtime: RuntimeDep, request: Request) -> AsyncIterator[AsyncSession]:
    """Dependency: one transaction per request, committed when the handler returns normally.

    Used with `scope="function"` so the commit happens before the answer leaves: a client
    that got 201 can read the record at once. A call with an `Idempotency-Key` runs in the
    gateway's transaction instead, which the gateway commits with the key's look-up.
    """
    shared = request.scope.get(CALL_SESSION)
    if isinstance(shared, AsyncSession):
        yield shared
        return
    async with runtime.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
