"""How fast this process may call the CRM: `CRM_MAX_REQUESTS_PER_SECOND` and its 429s.

Real CRMs impose rate limits. Every CRM call of the process (deliveries, probes,
reconciliation reads) waits its turn here:

- a ceiling, `CRM_MAX_REQUESTS_PER_SECOND`: calls are spaced evenly (aiolimiter's leaky
  bucket with room for one call), so no wall-clock second ever sees more than the limit;
- a pause: when the CRM answers 429, every call of the process waits out its
  `Retry-After` (1 s when it names none), not only the request that got it.
"""

import asyncio
from datetime import UTC, datetime

from aiolimiter import AsyncLimiter

from customer_service.sync.retry import parse_retry_after

# A 429 without a usable Retry-After pauses the process for this long.
DEFAULT_PAUSE_SECONDS = 1.0


def pause_seconds(retry_after: str | None, now: datetime) -> float:
    """How long a 429 answer pauses the process's calls."""
    seconds = parse_retry_after(retry_after, now)
    return DEFAULT_PAUSE_SECONDS if seconds is None else max(seconds, 0.0)


class CrmPaused(Exception):
    """A call not made: the CRM's 429 pauses calls for longer than the caller waits."""


class CallThrottle:
    def __init__(self, max_per_second: float = 0.0) -> None:
        # Capacity one: each call takes the whole bucket, which drains in 1/limit s.
        self._limiter = AsyncLimiter(1, 1 / max_per_second) if max_per_second > 0 else None
        self._paused_until = 0.0

    async def wait_turn(self, patience: float) -> None:
        """Return when this call may go: after any 429 pause, and within the ceiling.

        Raises `CrmPaused` at once when the pause lasts longer than `patience` (the CRM
        timeout): the call fails like one the CRM did not answer, instead of holding its
        caller (an API request, a delivery) for as long as the CRM asked everyone to wait.
        """
        loop = asyncio.get_running_loop()
        while True:  # a pause may be extended while we wait
            delay = self._paused_until - loop.time()
            if delay <= 0:
                break
            if delay > patience:
                raise CrmPaused(f"the CRM asked to wait {delay:.0f} s (429 Retry-After)")
            await asyncio.sleep(delay)
        if self._limiter is not None:
            await self._limiter.acquire()

    def too_many_requests(self, retry_after: str | None) -> None:
        """The CRM answered 429: hold every call of the process for its Retry-After."""
        loop = asyncio.get_running_loop()
        until = loop.time() + pause_seconds(retry_after, datetime.now(UTC))
        self._paused_until = max(self._paused_until, until)

    @property
    def paused(self) -> bool:
        return self._paused_until > asyncio.get_running_loop().time()
