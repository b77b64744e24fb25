"""The loop-thread SQLite connections override private members of aiosqlite: this fails
when the installed aiosqlite is not the release they were checked against, or when the
members they rely on changed, so a new release cannot break a fresh install unseen."""

import asyncio
import inspect
import sqlite3
import threading
from functools import partial
from pathlib import Path

import aiosqlite
import pytest

from crm_mock.store import _LoopThreadConnection as CrmLoopThreadConnection
from customer_service.sqlite_driver import CHECKED_AIOSQLITE, LoopThreadConnection

OVERRIDES = [LoopThreadConnection, CrmLoopThreadConnection]


def test_the_installed_aiosqlite_is_the_checked_release() -> None:
    major_minor = ".".join(aiosqlite.__version__.split(".")[:2])
    assert major_minor == CHECKED_AIOSQLITE, (
        f"aiosqlite {aiosqlite.__version__} is installed; the loop-thread connections were "
        f"checked against {CHECKED_AIOSQLITE}: check them, then move the pin and the constant"
    )


def test_the_private_members_the_overrides_rely_on_are_still_there() -> None:
    connection = aiosqlite.Connection(partial(sqlite3.connect, ":memory:"), 64)
    assert connection._running is True
    assert connection._connection is None
    assert callable(connection._connector)
    for name in ("_connect", "_execute", "close"):
        assert inspect.iscoroutinefunction(getattr(aiosqlite.Connection, name)), name
    assert list(inspect.signature(aiosqlite.Connection.__init__).parameters)[:3] == [
        "self",
        "connector",
        "iter_chunk_size",
    ]
    # Every public call funnels through `_execute`, which the overrides run inline.
    assert "_execute" in inspect.getsource(aiosqlite.Connection.commit)
    assert "_execute" in inspect.getsource(aiosqlite.Cursor.execute)


@pytest.mark.parametrize("override", OVERRIDES)
async def test_statements_run_on_the_loop_thread_and_close_cleanly(
    override: type[aiosqlite.Connection], tmp_path: Path
) -> None:
    opened = partial(sqlite3.connect, str(tmp_path / "x.db"), check_same_thread=False)
    connection = await override(opened, 64)
    threads = threading.active_count()
    await connection.execute("CREATE TABLE t (v)")
    await connection.execute("INSERT INTO t VALUES (?)", (1,))
    await connection.commit()
    async with connection.execute("SELECT v FROM t") as cursor:
        assert await cursor.fetchall() == [(1,)]
    assert threading.active_count() == threads  # no worker thread was started
    await connection.close()
    with pytest.raises(ValueError):
        await connection.execute("SELECT 1")
    await asyncio.sleep(0)
