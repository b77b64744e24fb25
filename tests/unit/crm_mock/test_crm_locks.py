"""Per-key locks: one holder per key at a time, different keys independent, nothing left over."""

import asyncio

from crm_mock.locks import KeyedLocks


async def test_same_key_runs_one_at_a_time_and_is_forgotten_after() -> None:
    locks = KeyedLocks()
    events: list[str] = []
    first_inside = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with locks.hold("k"):
            events.append("first in")
            first_inside.set()
            await release_first.wait()
            events.append("first out")

    async def second() -> None:
        await first_inside.wait()
        async with locks.hold("k"):
            events.append("second in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await first_inside.wait()
    release_first.set()
    await asyncio.gather(*tasks)

    assert events == ["first in", "first out", "second in"]
    assert len(locks) == 0


async def test_different_keys_do_not_wait_for_each_other() -> None:
    locks = KeyedLocks()

    async with locks.hold("a"), locks.hold("b"):
        assert len(locks) == 2

    assert len(locks) == 0
