"""The CRM store on a real SQLite file: request-log pruning and start-up on an existing file."""

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from crm_mock import store


@pytest.fixture
async def engine(crm_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = store.create_engine(crm_database_url)
    await store.create_tables(engine)
    yield engine
    await engine.dispose()


def log_entry(n: int) -> store.RequestLogEntry:
    return store.RequestLogEntry(
        method="GET",
        path=f"/api/crm/customers/{n}",
        status=200,
        external_id=str(n),
        idempotency_key=None,
        body={"n": n},
        received_at=store.utc_now() + timedelta(microseconds=n),
    )


async def test_request_log_prunes_entries_beyond_retention(engine: AsyncEngine) -> None:
    sessionmaker = store.create_sessionmaker(engine)
    for n in range(1, 26):
        async with sessionmaker() as session, session.begin():
            await store.append_request_log(session, log_entry(n), retention=10, prune_every=5)

    async with sessionmaker() as session:
        ids = (await session.execute(select(store.RequestLogEntry.id))).scalars().all()
        items, total = await store.list_request_log(session, external_id=None, limit=100)

    # The 25th insert pruned every id <= 15: the newest 10 are left, oldest first.
    assert sorted(ids) == list(range(16, 26))
    assert total == 10
    assert [item.body for item in items] == [{"n": n} for n in range(16, 26)]


async def test_request_log_keeps_every_entry_between_prunes(engine: AsyncEngine) -> None:
    sessionmaker = store.create_sessionmaker(engine)
    for n in range(1, 15):
        async with sessionmaker() as session, session.begin():
            await store.append_request_log(session, log_entry(n), retention=10, prune_every=5)

    async with sessionmaker() as session:
        count = (await session.execute(select(func.count(store.RequestLogEntry.id)))).scalar_one()

    # Pruned at id 10 (ids <= 0: none); entries 1..14 are all still there, at least 10 kept.
    assert count == 14


async def test_the_consumers_run_prunes_its_log_rows_as_the_http_server_does(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`insert_log_rows` (a Kafka run's log, on the run's sync connection) keeps the same
    rule as `append_request_log`: when an id it was given is a multiple of the prune
    period, every entry older than the newest `REQUEST_LOG_RETENTION` goes."""
    monkeypatch.setattr(store, "REQUEST_LOG_RETENTION", 10)
    monkeypatch.setattr(store, "REQUEST_LOG_PRUNE_EVERY", 5)
    columns = ("method", "path", "status", "external_id", "idempotency_key", "body", "received_at")

    def rows(numbers: range) -> list[dict[str, object]]:
        return [{c: getattr(log_entry(n), c) for c in columns} for n in numbers]

    # Runs of 3 and 4 rows: ids 1-3, 4-7 (5 is in it: prunes <= -3, nothing), 8-11 (10:
    # prunes <= 1), then 12-14 (no multiple of 5: nothing pruned).
    for numbers in (range(1, 4), range(4, 8), range(8, 12), range(12, 15)):
        async with engine.begin() as connection:
            await connection.run_sync(store.insert_log_rows, rows(numbers))
    async with engine.connect() as connection:
        ids = (await connection.execute(select(store.RequestLogEntry.id))).scalars().all()
    assert sorted(ids) == list(range(2, 15))

    # 15-24: ids 15 and 20 are in it; the prune keeps the newest 10 of the 24.
    async with engine.begin() as connection:
        await connection.run_sync(store.insert_log_rows, rows(range(15, 25)))
    async with engine.connect() as connection:
        ids = (await connection.execute(select(store.RequestLogEntry.id))).scalars().all()
    assert sorted(ids) == list(range(15, 25))


async def test_timestamps_read_back_timezone_aware_in_utc(engine: AsyncEngine) -> None:
    sessionmaker = store.create_sessionmaker(engine)
    written = log_entry(1)
    async with sessionmaker() as session, session.begin():
        await store.append_request_log(session, written)

    async with sessionmaker() as session:
        (read,), _ = await store.list_request_log(session, external_id=None, limit=1)

    assert read.received_at == written.received_at
    assert read.received_at.utcoffset() == timedelta(0)


async def test_create_tables_keeps_existing_data(crm_database_url: str) -> None:
    first = store.create_engine(crm_database_url)
    await store.create_tables(first)
    async with store.create_sessionmaker(first)() as session, session.begin():
        await store.append_request_log(session, log_entry(1))
    await first.dispose()

    second = store.create_engine(crm_database_url)
    await store.create_tables(second)
    async with store.create_sessionmaker(second)() as session:
        _, total = await store.list_request_log(session, external_id=None, limit=10)
    await second.dispose()

    assert total == 1


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = store.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'pragmas.db'}")
    try:
        async with engine.connect() as connection:
            journal_mode = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar()
            busy_timeout = (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar()
    finally:
        await engine.dispose()

    assert journal_mode == "wal"
    assert busy_timeout == store.SQLITE_BUSY_TIMEOUT_MS
