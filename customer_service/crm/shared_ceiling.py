"""The CRM's limits for all replicas together, on PostgreSQL: `CRM_MAX_REQUESTS_PER_SECOND`
(`SharedCeiling`) and a 429's pause (`SharedPause`).

A CRM's limit is the CRM's, not a replica's: three replicas each keeping to the whole
limit called it three times too fast. Every CRM call of every replica takes a place in
the current wall-clock second first: one statement counts it in `crm_call_windows` (a
row per second, the count raised only while under the limit, atomically), and a call
that finds its second full waits for the next one. No replica needs to know how many
others there are, and one that joins or dies changes nothing. Rows older than a minute
are dropped now and then.

A place is never taken in the last `ARRIVAL_MARGIN` of a second: the CRM counts a call
in the second it arrives, and one placed in a second's last moments (a replica's first
call opens its connection first) landed in the next second, on top of that second's
full count (three replicas at a limit of 30: 34 calls in one second). Such a call waits
for the next second and takes its place there.

Each process still paces its own calls evenly (`throttle.CallThrottle`), so a second's
places are not all taken in its first milliseconds. On SQLite (one process, one
database file) the process's own pace is the whole story: no window is kept.
"""

import asyncio
import logging
import random
import time
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

TAKE = text(
    "INSERT INTO crm_call_windows (second, calls) VALUES (:second, 1)"
    " ON CONFLICT (second) DO UPDATE SET calls = crm_call_windows.calls + 1"
    " WHERE crm_call_windows.calls < :limit"
    " RETURNING calls"
)
FORGET = text("DELETE FROM crm_call_windows WHERE second < :before")
FORGET_EVERY = 500
KEEP_SECONDS = 60
# The end of each second in which no place is taken (module doc): longer than a call
# takes from its place to the CRM on a busy machine, short against the second.
ARRIVAL_MARGIN = 0.1


class SharedCeiling:
    def __init__(
        self, engine: AsyncEngine, limit: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        # Whole calls per second: a limit of 2.5 allows 2 in any one second.
        self._limit = max(1, int(limit))
        self._clock = clock
        self._taken = 0

    async def take(self) -> None:
        """Return once this call has a place in the current second of all replicas."""
        while True:
            now = self._clock()
            second = int(now)
            if now - second >= 1 - ARRIVAL_MARGIN:
                await self._next_second(second)
                continue
            async with self._engine.connect() as connection:
                found = await connection.execute(TAKE, {"second": second, "limit": self._limit})
                placed = found.first() is not None
                self._taken += 1
                if self._taken % FORGET_EVERY == 0:
                    await connection.execute(FORGET, {"before": second - KEEP_SECONDS})
                await connection.commit()
            if placed:
                return
            await self._next_second(second)  # full

    async def _next_second(self, second: int) -> None:
        """Wait for the second after `second`, the replicas spread over its first moments."""
        await asyncio.sleep(second + 1 - self._clock() + random.uniform(0, 0.02))


PAUSE_NAME = "crm"
READ_PAUSE = text("SELECT until_epoch FROM crm_pauses WHERE name = :name")
WRITE_PAUSE = text(
    "INSERT INTO crm_pauses (name, until_epoch) VALUES (:name, :until)"
    " ON CONFLICT (name) DO UPDATE"
    " SET until_epoch = GREATEST(crm_pauses.until_epoch, excluded.until_epoch)"
)
# How stale a replica's view of the shared pause may be.
PAUSE_READ_EVERY_SECONDS = 0.5


class SharedPause:
    """A 429 pauses the calls of every replica, not only of the one that got it.

    The replica that got it writes until when (wall-clock, only ever raised) in
    `crm_pauses`; every replica reads it before its calls, at most every half second, so
    the others stop within half a second too. A database that fails a read or a write
    costs only the sharing: each replica still keeps to the pauses it got itself.
    """

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock
        self._until = 0.0
        self._read_at = -1e9
        self._reading: asyncio.Future[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()

    async def until(self) -> float:
        """Until when (wall-clock seconds) the CRM asked every replica to wait; 0: never.
        Calls that ask while a read is under way wait for that read (each would otherwise
        go with what was known before it: a batch's calls all left in a pause)."""
        if self._reading is None and time.monotonic() - self._read_at >= PAUSE_READ_EVERY_SECONDS:
            self._reading = asyncio.ensure_future(self._read())
        if self._reading is not None:
            await asyncio.shield(self._reading)
        return self._until

    async def _read(self) -> None:
        try:
            async with self._engine.connect() as connection:
                found = await connection.scalar(READ_PAUSE, {"name": PAUSE_NAME})
        except Exception:
            log.debug("could not read the shared CRM pause", exc_info=True)
        else:
            if found is not None:
                self._until = max(self._until, float(found))
        finally:
            self._read_at = time.monotonic()
            self._reading = None

    def publish(self, until: float) -> None:
        """Tell the other replicas to wait until `until` (wall-clock), in the background."""
        self._until = max(self._until, until)
        task = asyncio.create_task(self._write(until), name="crm-pause-share")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, until: float) -> None:
        try:
            async with self._engine.connect() as connection:
                await connection.execute(WRITE_PAUSE, {"name": PAUSE_NAME, "until": until})
                await connection.commit()
        except Exception:
            log.warning("could not share the CRM's pause with the other replicas")
