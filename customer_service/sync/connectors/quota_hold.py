"""A CRM's call quota spent (HubSpot's daily limit, Salesforce's
`REQUEST_LIMIT_EXCEEDED`): deliveries held until a moment, no call made meanwhile (the
probe included), every request failed with a 429 whose Retry-After is the time left.

The connector decides when its CRM's answer starts the hold and for how long; the hold
keeps the moment (as loop time), the detail an operator reads, and the failure each
request gets while it lasts.
"""

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from customer_service.sync.outcome import Failed


class QuotaHold:
    """Loop time until which no call is made, and why (`detail`)."""

    def __init__(
        self,
        limit: str,
        redact: Callable[[str], str],
        log: logging.Logger,
        *,
        keep_later: bool = False,
    ) -> None:
        # How the limit is named in the detail and the log ("HubSpot's daily API limit").
        self.limit = limit
        self._redact = redact
        self._log = log
        # True: a hold ending sooner than the one running leaves it as it is.
        self._keep_later = keep_later
        self._until = 0.0
        self.detail = ""

    def left(self) -> float:
        """Seconds until the hold lapses (0 or less: no hold)."""
        return self._until - asyncio.get_running_loop().time()

    def failure(self) -> Failed:
        """What a request gets while the hold lasts: a 429 with the seconds left."""
        left = max(1, round(self.left()))
        return Failed(self.detail, 429, str(left))

    def start(self, seconds: float, now: datetime, answered: str) -> Failed:
        """Hold deliveries `seconds` from `now` for the answer described as `answered`."""
        until_loop = asyncio.get_running_loop().time() + seconds
        if not self._keep_later or until_loop > self._until:
            self._until = until_loop
            until = (now + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.detail = self._redact(f"{answered} ({self.limit}): deliveries held until {until}")
            self._log.warning("%s is reached: no calls until %s", self.limit, until)
        return self.failure()
