"""How fast this process may call the CRM: `CRM_MAX_REQUESTS_PER_SECOND` and its 429s.

Real CRMs impose rate limits. Every CRM call of the process (deliveries, probes,
reconciliation reads) waits its turn here:

- a ceiling, `CRM_MAX_REQUESTS_PER_SECOND`: calls are spaced evenly, so no wall-clock
  second ever sees more than the limit;
- a learnt pace: a CRM's 429s teach the pace it accepts (`CallThrottle`);
- a pause: when the CRM answers 429, every call of the process waits out its
  `Retry-After` (1 s when it names none), not only the request that got it;
- on PostgreSQL, the ceiling of all replicas together (`shared_ceiling`);
- a pace the CRM states in its answers (`CallThrottle.advertised`: HubSpot's
  `X-HubSpot-RateLimit-*` headers), kept before any 429.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from customer_service.crm.shared_ceiling import SharedCeiling, SharedPause
from customer_service.sync.retry import parse_retry_after

# A 429 without a usable Retry-After pauses the process for this long.
DEFAULT_PAUSE_SECONDS = 1.0

log = logging.getLogger(__name__)


def pause_seconds(retry_after: str | None, now: datetime) -> float:
    """How long a 429 answer pauses the process's calls."""
    seconds = parse_retry_after(retry_after, now)
    return DEFAULT_PAUSE_SECONDS if seconds is None else max(seconds, 0.0)


class CrmPaused(Exception):
    """A call not made: the CRM's 429 pauses calls for longer than the caller waits."""


# A 429 learns a pace this share of the most calls the CRM accepted in one wall-clock
# second just before (or of the pace already learnt, if lower), so an even pace stays
# under its window.
LEARN_FACTOR = 0.95
# The share of CRM_MAX_REQUESTS_PER_SECOND the calls are paced at.
CEILING_SHARE = 0.95
# The seconds before a 429 whose accepted calls it learns from: the second of the 429 may
# have just begun, and the one before may have been spent in a pause.
LEARN_FROM_SECONDS = 3
MIN_RATE = 1.0
# Without a 429 for this long, a learnt pace grows by GROWTH: the CRM's limit may have been
# raised, or the 429 may have come from a burst of someone else's calls. Each 429 found
# that way costs a pause of its Retry-After for every call: rarely, then.
GROWTH_SECONDS = 10.0
GROWTH = 1.05
# A pace grown past this is no limit any more: dropped.
UNLIMITED = 100_000.0
# 429s in this long after a pace was learnt answer calls sent before it: not learnt again.
SETTLING_SECONDS = 1.0


def learned_rate(busiest_second: int, current: float | None) -> float:
    """The pace a 429 teaches: a little under the most calls the CRM accepted in one
    second just before, and under the pace already learnt (a 429 at that pace says it
    is still too fast)."""
    seen = float(busiest_second) if current is None else min(busiest_second, current)
    return max(MIN_RATE, LEARN_FACTOR * seen)


def grown_rate(current: float, quiet_seconds: float) -> float | None:
    """A learnt pace after `quiet_seconds` without a 429; None once it is no limit."""
    grown = current * GROWTH ** int(quiet_seconds / GROWTH_SECONDS)
    return None if grown > UNLIMITED else grown


def taken_up_second(sent: float, answered: float) -> int:
    """The wall-clock second the CRM most likely counted a call in: the CRM counts a call
    when it takes it up, somewhere between its departure and its answer, so the middle.
    By departure, a drain's first calls, sent together at the end of one second into a
    busy CRM that took them up in the next, split the CRM's full second of 50 accepted
    calls into 16 and 34 (a pace of 32 learnt instead of 47.5: phase 9 of the benchmark on
    a slow hour drained at 35 calls a second); by answer, the answers of one second's calls
    that came in the next made 57 of 50."""
    return int((sent + answered) / 2)


class CallThrottle:
    """The process's calls to the CRM, paced (see the module's docstring).

    - the ceiling, `CRM_MAX_REQUESTS_PER_SECOND`: calls are spaced evenly at 95 % of it,
      departures at least that far apart even when the loop wakes late, so no wall-clock
      second of the CRM sees more than the limit;
    - a learnt pace: with no ceiling set, or one above what the CRM accepts, a 429 sets
      the pace to a little under the most calls the CRM accepted in one wall-clock
      second just before it (`learned_rate`), and each `GROWTH_SECONDS` without a 429
      the pace grows by 5 % (`grown_rate`), so refused calls stay a small share of the
      accepted ones instead of a burst of refusals every second (before: 200 writes
      against a CRM allowing 10 calls a second cost 287 refused calls);
    - the pause: a 429 holds every call for its `Retry-After` (1 s when it names none).
    """

    def __init__(
        self,
        max_per_second: float = 0.0,
        clock: Callable[[], float] = time.time,
        shared: "SharedCeiling | None" = None,
        shared_pause: "SharedPause | None" = None,
    ) -> None:
        # A 429's pause, shared with the other replicas (PostgreSQL).
        self._shared_pause = shared_pause
        # For a CRM that states its limit in every answer (`advertised`): until the first
        # answer came, one call at a time (`wait_for_first_answer`).
        self._first_answer: asyncio.Event | None = None
        self._first_out = False
        # The ceiling of all replicas together (PostgreSQL), taken after our own pace.
        self._shared = shared
        # A little under the limit: the CRM counts calls as they arrive, and the network
        # and its own event loop move some into the next second.
        self._ceiling = CEILING_SHARE * max_per_second if max_per_second > 0 else None
        self._learned: float | None = None
        # The pace the CRM's own headers state (`advertised`), None when they state none.
        self._advertised: float | None = None
        self._learned_at = 0.0  # loop time of the last 429 learnt, or of the last growth
        # Loop time of the last 429 learnt: the 429s just after it answer calls sent at the
        # pace before. (Not after a growth: a 429 then says the grown pace is too fast.)
        self._lesson_taken_at = -SETTLING_SECONDS
        self._next_slot = 0.0
        self._last_departure = -1e9
        self._paused_until = 0.0
        self._clock = clock  # wall-clock seconds, as CRMs count their windows
        # Calls the CRM accepted since the last lesson, by the wall-clock second it took
        # them up in (`taken_up_second`): second -> count, the last few seconds.
        self._accepted: dict[int, int] = {}
        # A 429 to learn from once the answers still in flight have landed (its pause
        # over): the loop time from which it may be learnt.
        self._lesson_at: float | None = None

    @property
    def pace(self) -> float | None:
        """Calls per second this process keeps to now (None: no limit)."""
        self._learn_if_due()
        paces = [p for p in (self._ceiling, self._learned, self._advertised) if p is not None]
        return min(paces) if paces else None

    async def wait_turn(self, patience: float) -> float:
        """Return when this call may go, after any 429 pause and at the pace, with the
        wall-clock time it leaves at (for `answered`).

        Raises `CrmPaused` at once when the pause lasts longer than `patience` (the CRM
        timeout): the call fails like one the CRM did not answer, instead of holding its
        caller (an API request, a delivery) for as long as the CRM asked everyone to wait.
        """
        loop = asyncio.get_running_loop()
        await self._first_answer_known(patience)
        if self._shared_pause is not None:
            left = await self._shared_pause.until() - self._clock()
            if left > 0:
                self._paused_until = max(self._paused_until, loop.time() + left)
        while True:  # a pause may be extended while we wait
            delay = self._paused_until - loop.time()
            if delay <= 0:
                break
            if delay > patience:
                raise CrmPaused(f"the CRM asked to wait {delay:.0f} s (429 Retry-After)")
            await asyncio.sleep(delay)
        now = loop.time()
        self._grow(now)
        pace = self.pace
        if pace is None:
            return self._clock()
        interval = 1.0 / pace
        slot = max(now, self._next_slot)
        self._next_slot = slot + interval
        if slot > now:
            await asyncio.sleep(slot - now)
        # Woken late (a busy loop), calls whose slots followed each other would leave
        # together: keep the spacing between departures too.
        # Not an event to wait for: a time to wait until, moved on by whoever left first.
        while (gap := self._last_departure + interval - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(gap)
        self._last_departure = loop.time()
        if self._shared is not None:
            await self._shared.take()
        return self._clock()

    def answered(self, status: int, retry_after: str | None, sent: float | None = None) -> None:
        """Tell the throttle the CRM's answer to a call that left at wall-clock time `sent`
        (now when not known): a 429 pauses every call and, once the answers still
        in flight have landed, teaches the pace (the first 429 after a burst arrived while
        a quarter of that second's accepted calls were still unanswered, and a pace learnt
        from the answers then in was three quarters of the CRM's limit); any other answer
        counts as a call the CRM accepted, in the second it most likely took it up in
        (`taken_up_second`)."""
        now = asyncio.get_running_loop().time()
        if status != 429:
            answered_at = self._clock()
            second = taken_up_second(answered_at if sent is None else sent, answered_at)
            self._accepted[second] = self._accepted.get(second, 0) + 1
            if len(self._accepted) > LEARN_FROM_SECONDS + 2:
                del self._accepted[min(self._accepted)]
            return
        pause = pause_seconds(retry_after, datetime.now(UTC))
        self._paused_until = max(self._paused_until, now + pause)
        if self._shared_pause is not None:
            self._shared_pause.publish(self._clock() + pause)
        if now - self._lesson_taken_at < SETTLING_SECONDS:
            return
        if self._lesson_at is None:
            self._lesson_at = self._paused_until

    def _learn_if_due(self) -> None:
        if self._lesson_at is None:
            return
        now = asyncio.get_running_loop().time()
        if now < self._lesson_at:
            return
        self._lesson_at = None
        recent = int(self._clock()) - LEARN_FROM_SECONDS - 1
        accepted = max((n for second, n in self._accepted.items() if second > recent), default=0)
        # The next lesson learns from the calls made at this pace only: a busy second
        # miscounted before it would teach a pace above it once more.
        self._accepted.clear()
        self._learned = learned_rate(accepted, self._learned)
        self._learned_at = self._lesson_taken_at = now
        log.warning(
            "the CRM answered 429: pacing its calls at %.1f a second (it accepted up to %s"
            " in a second just before)",
            self._learned,
            accepted,
        )

    def wait_for_first_answer(self) -> None:
        """Let one call go alone until an answer has told the CRM's limit (`advertised`):
        a drain's first calls all at once, before any answer, overran HubSpot's ten calls
        a second (three refused calls of two hundred)."""
        self._first_answer = asyncio.Event()

    async def _first_answer_known(self, patience: float) -> None:
        gate = self._first_answer
        if gate is None or gate.is_set():
            return
        if not self._first_out:
            self._first_out = True  # this call goes, alone
            return
        # A first call that never gets an answer must not hold the others for long.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate.wait(), patience)

    def advertised(
        self, limit: int | None, remaining: int | None, interval_seconds: float | None
    ) -> None:
        """The limit the CRM states in an answer (HubSpot: `X-HubSpot-RateLimit-Max`
        calls per `-Interval-Milliseconds`, `-Remaining` of them left): calls are paced at
        95 % of it from the first answer on, before any 429; when none are left in the
        window, every call waits one call's share of the window first. `limit` None (or
        no interval): the CRM states no limit, and the stated pace is dropped."""
        if self._first_answer is not None:
            self._first_answer.set()
        if not limit or not interval_seconds or limit <= 0 or interval_seconds <= 0:
            self._advertised = None
            return
        pace = CEILING_SHARE * limit / interval_seconds
        first = self._advertised is None
        self._advertised = None if pace > UNLIMITED else pace
        now = asyncio.get_running_loop().time()
        if first and self._advertised is not None:
            # Calls left unpaced before this answer count in the window: the first paced
            # one keeps its distance from them.
            self._next_slot = max(self._next_slot, now + 1.0 / self._advertised)
        if remaining is not None and remaining <= 0:
            self._paused_until = max(self._paused_until, now + interval_seconds / limit)

    def _grow(self, now: float) -> None:
        if self._learned is None:
            return
        quiet = now - self._learned_at
        if quiet < GROWTH_SECONDS:
            return
        self._learned = grown_rate(self._learned, quiet)
        self._learned_at = now - quiet % GROWTH_SECONDS

    @property
    def paused(self) -> bool:
        return self._paused_until > asyncio.get_running_loop().time()
