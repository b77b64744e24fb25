"""The journal's group commit, on a real database: what `record` promises when it returns."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from crm_mock import store
from crm_mock.journal import Journal


@pytest.fixture
async def sessionmaker(crm_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine: AsyncEngine = store.create_engine(crm_database_url)
    await store.create_tables(engine)
    yield store.create_sessionmaker(engine)
    await engine.dispose()


def log_entry(n: int, *, status: int | None = 201) -> store.RequestLogEntry:
    return store.RequestLogEntry(
        method="POST",
        path="/api/crm/customers",
        status=status,
        external_id=str(n),
        idempotency_key=f"key-{n}",
        body={"n": n},
        received_at=store.utc_now() + timedelta(microseconds=n),
    )


def kept_answer(n: int) -> store.IdempotentAnswer:
    return store.IdempotentAnswer(
        key=f"key-{n}",
        method="POST",
        path="/api/crm/customers",
        status_code=201,
        headers="{}",
        body=f'{{"n": {n}}}',
        created_at=store.utc_now(),
    )


async def logged_ids(sessionmaker: async_sessionmaker[AsyncSession]) -> list[str | None]:
    async with sessionmaker() as session:
        items, _ = await store.list_request_log(session, external_id=None, limit=1000)
    return [item.external_id for item in items]


async def test_a_recorded_entry_and_answer_are_readable_when_record_returns(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    journal = Journal(sessionmaker)
    journal.start()
    try:
        await journal.record(log_entry(1), kept_answer(1))

        assert await logged_ids(sessionmaker) == ["1"]
        async with sessionmaker() as session:
            found = await store.find_idempotent_answer(session, "key-1")
        assert found is not None and found.body == '{"n": 1}'
    finally:
        await journal.close()


async def test_concurrent_records_are_all_written_in_fewer_transactions_than_calls(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    journal = Journal(sessionmaker)
    transactions = 0
    real_write = journal._write

    async def counting_write(group: list) -> None:  # type: ignore[type-arg]
        nonlocal transactions
        transactions += 1
        await real_write(group)

    journal._write = counting_write  # type: ignore[method-assign]
    journal.start()
    try:
        await asyncio.gather(*(journal.record(log_entry(n), kept_answer(n)) for n in range(200)))
    finally:
        await journal.close()

    assert sorted(await logged_ids(sessionmaker), key=lambda i: int(i or 0)) == [
        str(n) for n in range(200)
    ]
    async with sessionmaker() as session:
        answers = await session.execute(select(func.count()).select_from(store.IdempotentAnswer))
        assert answers.scalar_one() == 200
    assert transactions < 200


async def test_a_row_the_database_refuses_fails_only_its_own_record(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    journal = Journal(sessionmaker)
    journal.start()
    try:
        results = await asyncio.gather(
            journal.record(log_entry(1)),
            journal.record(log_entry(2, status=None)),  # NOT NULL: refused
            journal.record(log_entry(3)),
            return_exceptions=True,
        )
    finally:
        await journal.close()

    assert results[0] is None and results[2] is None
    assert isinstance(results[1], Exception)
    assert sorted(await logged_ids(sessionmaker)) == ["1", "3"]


async def test_a_repeated_key_keeps_its_first_answer(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    journal = Journal(sessionmaker)
    journal.start()
    second = kept_answer(1)
    second.body = "second"
    try:
        await journal.record(log_entry(1), kept_answer(1))
        await journal.record(log_entry(2), second)
    finally:
        await journal.close()

    async with sessionmaker() as session:
        found = await store.find_idempotent_answer(session, "key-1")
    assert found is not None and found.body == '{"n": 1}'
    assert sorted(await logged_ids(sessionmaker)) == ["1", "2"]


async def test_records_after_close_are_still_written(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    journal = Journal(sessionmaker)
    journal.start()
    await journal.close()

    await journal.record(log_entry(7))

    assert await logged_ids(sessionmaker) == ["7"]


async def test_group_writes_prune_beyond_retention(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    journal = Journal(sessionmaker, retention=10, prune_every=5)
    journal.start()
    try:
        for start in range(1, 26, 5):
            await asyncio.gather(*(journal.record(log_entry(n)) for n in range(start, start + 5)))
    finally:
        await journal.close()

    # The group holding id 25 pruned every id <= 15: the newest 10 are left.
    assert sorted(await logged_ids(sessionmaker), key=lambda i: int(i or 0)) == [
        str(n) for n in range(16, 26)
    ]
