"""Background database work that cancellation cannot interrupt, within a connection budget.

Every transaction of the sync engine (claim, read the queue, settle, record a failure,
release, renew a lease, find due customers) runs through `BackgroundDatabase.run` (or
`run_on_driver`, for the group commit's statements on the driver's own connection):

- **Shielded.** The transaction runs in a task of its own, awaited through
  `asyncio.shield`. A caller that is cancelled (a pass giving way at shutdown, a
  heartbeat stopped, a delivery past its grace period) stops waiting at once, but the
  transaction itself runs to its commit or rollback and gives its connection back. A
  cancellation landing inside a transaction is what once left the only SQLite
  connection checked out, holding the write lock, with every API call waiting for it.
- **Bounded.** At most `slots` such transactions hold a connection at once, so the
  delivery machinery never takes the whole pool: the rest is the API's (see
  `Settings.sync_database_connections`).
- **Drained.** `drain()` waits for the transactions still running, so the engine is
  disposed only after every connection is back.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")


class BackgroundDatabase:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], slots: int) -> None:
        self._sessionmaker = sessionmaker
        self._slots = asyncio.Semaphore(slots)
        self._running: set[asyncio.Task[object]] = set()

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work(session)` in one transaction, committed when it returns, rolled back
        when it raises; the caller's cancellation never interrupts it."""
        return await self._shielded(self._transaction(work))

    async def run_on_driver(self, work: Callable[[Any], Awaitable[T]], transaction: bool) -> T:
        """Run `work(connection)` on a pooled connection's driver connection (asyncpg's),
        in one transaction (committed when it returns, rolled back when it raises) or,
        without `transaction`, each statement committing on its own. The transaction is
        the driver's: it has ended when the connection goes back to the pool."""
        return await self._shielded(self._on_driver(work, transaction))

    def submit(self, work: Callable[[AsyncSession], Awaitable[object]]) -> None:
        """Run `work(session)` in one transaction in the background, nobody waiting for
        it; registered at once, so `drain` waits for it too."""
        self._register(self._transaction(work))

    async def _shielded(self, work: Coroutine[Any, Any, T]) -> T:
        return await asyncio.shield(self._register(work))

    def _register(self, work: Coroutine[Any, Any, T]) -> "asyncio.Task[T]":
        task: asyncio.Task[T] = asyncio.create_task(work)
        self._running.add(task)
        task.add_done_callback(self._finished)
        return task

    async def _transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self._slots, self._sessionmaker() as session, session.begin():
            return await work(session)

    async def _on_driver(self, work: Callable[[Any], Awaitable[T]], transaction: bool) -> T:
        async with self._slots, self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None, "a pooled connection without its driver connection"
            if not transaction:
                return await work(driver)
            async with driver.transaction():
                return await work(driver)

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._running.discard(task)
        # A caller cancelled meanwhile never reads the outcome: read it here, so a
        # failure is logged once instead of "exception was never retrieved".
        if not task.cancelled() and task.exception() is not None:
            log.debug("background transaction failed", exc_info=task.exception())

    @property
    def engine(self) -> AsyncEngine:
        """The engine whose pool these transactions draw on."""
        engine: AsyncEngine = self._sessionmaker.kw["bind"]
        return engine

    @property
    def dialect(self) -> str:
        """The database's dialect name: "postgresql", "sqlite"."""
        return self.engine.dialect.name

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def drain(self) -> None:
        """Wait for every transaction still running (they are short: no CRM call is ever
        made inside one)."""
        while True:
            while self._running:
                await asyncio.gather(*list(self._running), return_exceptions=True)
            # A caller woken by the last transaction may start one more (a claim given
            # back by an abandoned look): let it, then look again.
            await asyncio.sleep(0)
            if not self._running:
                return
