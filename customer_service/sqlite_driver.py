"""SQLite on the event loop's thread: aiosqlite's connection without its worker thread.

aiosqlite hands every call to a thread of its own and back: three or four hand-offs a
statement, about 0.1 ms of CPU each, where SQLite itself needs tens of microseconds on a
local file in WAL mode with `synchronous=NORMAL`. Profiled on the drain of a backlog, the
hand-offs were the largest single cost of the service (more than a third of its samples),
and they are paid by every API write too. Blocking the loop for one statement is cheaper
than any hand-off.

The price: while another process holds the database's write lock (a CLI command such as
`customer-service retry` against the same file), SQLite's busy handler waits on the loop's
thread, so this process pauses for as long instead of only the waiting request. Our own
transactions are short (no CRM call is ever made inside one), so that pause is one
transaction long. PostgreSQL, the production database, is not concerned.

The CRM mock holds the same class (`crm_mock.store`): the two packages never import each
other, so it is written twice on purpose.

aiosqlite has no public API for this: the class overrides private members of its
`Connection` (`_connect`, `_execute`, `_connection`, `_connector`, `_running`). They were
checked against the releases of `CHECKED_AIOSQLITE`, which `pyproject.toml` pins;
`tests/unit/test_aiosqlite_pin.py` fails when the installed aiosqlite is another release or
those members change, before a new release could break a fresh install.
"""

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Generator
from functools import partial
from typing import Any

import aiosqlite

# The aiosqlite releases (major.minor) this override was checked against.
CHECKED_AIOSQLITE = "0.22"


class LoopThreadConnection(aiosqlite.Connection):
    """aiosqlite's connection, running each SQLite call on the event loop's thread."""

    def __await__(self) -> Generator[Any, None, aiosqlite.Connection]:
        return self._connect().__await__()  # no worker thread to start

    async def _connect(self) -> aiosqlite.Connection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    def stop(self) -> asyncio.Future[None] | None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        return None

    async def close(self) -> None:
        self.stop()


def connector(path: str, timeout: float) -> Callable[[], Awaitable[aiosqlite.Connection]]:
    """An `async_creator` for SQLAlchemy: a loop-thread connection to the file `path`, with
    the driver's default transaction handling (the same as aiosqlite's)."""

    async def connect() -> aiosqlite.Connection:
        return await LoopThreadConnection(
            partial(sqlite3.connect, path, timeout=timeout, check_same_thread=False), 64
        )

    return connect
