"""How much of a core this process used lately: the delivery engine's second gauge of load.

The engine gathers kicks into fewer, larger batches when the service is short of CPU
(`engine.DeliveryEngine._gathering`): each batch costs a claim, a read and a settle
whatever its size, so fewer batches leave more of the one event loop to the API. The
first gauge, the API's transactions under way (`deps.ApiLoad`), only rises once requests
queue in front of a saturated loop; this one sees the loop filling up before that: at a
steady 458 writes a second on SQLite (half the sync-off capacity, as the benchmark's lag
phase asks) the service used 0.75-0.79 of its core gathering within 20 ms, 0.70-0.71
within 40 ms, and a few seconds of a slower machine then took it to its whole core,
the sync lag queueing behind it (p99 0.2-1 s).

`time.process_time` counts every thread of the process; the service's work runs on its
event loop's thread (SQLite's calls too), so the figure is that loop's.
"""

import time
from collections.abc import Callable

# How long each reading spans: long enough to smooth the loop's bursts, short beside the
# few seconds a slower machine lasts.
PERIOD_SECONDS = 0.25


def share_of_a_core(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU time over wall time (pure): 1.0 is a whole core."""
    if wall_seconds <= 0:
        return 0.0
    return max(0.0, cpu_seconds) / wall_seconds


class CpuShare:
    """The share of a core this process used over its last full period (0.0 until one
    has passed). Read it as often as wanted: it reads the clocks only when called, never
    on a timer of its own."""

    def __init__(
        self,
        period: float = PERIOD_SECONDS,
        wall: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._period = period
        self._wall = wall
        self._cpu = cpu
        self._since = wall()
        self._cpu_since = cpu()
        self._share = 0.0

    def __call__(self) -> float:
        now = self._wall()
        elapsed = now - self._since
        if elapsed >= self._period:
            used = self._cpu()
            self._share = share_of_a_core(used - self._cpu_since, elapsed)
            self._since, self._cpu_since = now, used
        return self._share
