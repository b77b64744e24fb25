"""`CRM_MAX_REQUESTS_PER_SECOND` for all replicas together, on PostgreSQL.

A CRM's limit is the CRM's, not a replica's: three replicas each keeping to the whole
limit called it three times too fast. Every CRM call of every replica takes a place in
the current wall-clock second first: one statement counts it in `crm_call_windows` (a
row per second, the count raised only while under the limit, atomically), and a call
that finds its second full waits for the next one. No replica needs to know how many
others there are, and one that joins or dies changes nothing. Rows older than a minute
are dropped now and then.

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
            async with self._engine.connect() as connection:
                found = await connection.execute(TAKE, {"second": second, "limit": self._limit})
                placed = found.first() is not None
                self._taken += 1
                if self._taken % FORGET_EVERY == 0:
                    await connection.execute(FORGET, {"before": second - KEEP_SECONDS})
                await connection.commit()
            if placed:
                return
            # Full: wait for the next second, the replicas spread over its first moments.
            await asyncio.sleep(second + 1 - self._clock() + random.uniform(0, 0.02))
