"""`SharedCeiling`: every replica's CRM calls take a place in the current wall-clock
second, never more than the limit, and never in a second's last moments, where the call
would reach the CRM in the next second on top of that second's full count."""

import time
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from customer_service.crm.shared_ceiling import ARRIVAL_MARGIN, SharedCeiling

SECOND = 1_000_000  # a wall-clock second of the fake clock, far from any real one


def clock_from(start: float) -> Callable[[], float]:
    """A clock at `start` that runs at the real pace."""
    began = time.monotonic()
    return lambda: start + (time.monotonic() - began)


async def _windows(engine: AsyncEngine, first: int) -> dict[int, int]:
    """The places taken from second `first` on (the database may hold other tests')."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT second, calls FROM crm_call_windows WHERE second BETWEEN :a AND :b"),
            {"a": first, "b": first + 9},
        )
        return {int(second): int(calls) for second, calls in rows}


async def test_a_place_is_taken_in_the_current_second_up_to_the_limit(
    sql_engine: AsyncEngine,
) -> None:
    ceiling = SharedCeiling(sql_engine, 3, clock=clock_from(SECOND + 0.1))
    for _ in range(4):
        await ceiling.take()  # the fourth waits for the next second

    assert await _windows(sql_engine, SECOND) == {SECOND: 3, SECOND + 1: 1}


async def test_no_place_is_taken_in_the_last_moments_of_a_second(
    sql_engine: AsyncEngine,
) -> None:
    second = SECOND + 10
    clock = clock_from(second + 1 - ARRIVAL_MARGIN / 2)
    ceiling = SharedCeiling(sql_engine, 30, clock=clock)

    await ceiling.take()

    assert clock() >= second + 1
    assert await _windows(sql_engine, second) == {second + 1: 1}
