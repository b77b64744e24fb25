"""Pure retry policy: which errors are worth retrying, and when to try again.

Backoff: after the n-th failed attempt (n >= 1) the next one is due after

    delay(n) = min(RETRY_BACKOFF_MAX_SECONDS, RETRY_BACKOFF_BASE_SECONDS * 2 ** (n - 1))
               * uniform(1 - JITTER, 1 + JITTER)

and never sooner than the CRM's `Retry-After`. With the defaults (1 s, 3600 s) the 25
attempts of `RETRY_MAX_ATTEMPTS` span about 14 hours. The retry job only runs every
`RETRY_INTERVAL_SECONDS`, so a request is retried at the first tick after it is due.
"""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum

from customer_service.sync.hold import hold_kind

JITTER = 0.2

# 4xx answers that say "try again later" rather than "this request is wrong".
TRANSIENT_CLIENT_ERRORS = frozenset({408, 409, 425, 429})


def is_permanent(status: int | None) -> bool:
    """True for an answer no retry can change: a 4xx other than 408, 409, 425, 429, and
    other than 401 and 403 (our credentials refused: the CRM as a whole is closed to us
    until they are fixed, which holds deliveries instead, `hold`).

    `None` (no answer: timeout, connection refused) and 5xx are transient.
    """
    if status is None:
        return False
    return 400 <= status < 500 and status not in TRANSIENT_CLIENT_ERRORS and not is_crm_wide(status)


def is_crm_wide(status: int | None) -> bool:
    """True when a failure says the CRM itself is unavailable (no answer, a timeout, 401,
    403, 429, 502, 503, 504: `hold.hold_kind`), so live deliveries should stop calling it
    until a probe says it is back; a failure of one request (a 500 on one record, a 409)
    only backs that one off."""
    return hold_kind(status) is not None


def backoff_seconds(
    attempts: int, base: float, maximum: float, rand: random.Random | None = None
) -> float:
    """The delay before the next attempt, after `attempts` failed ones (see module doc)."""
    exponent = min(max(attempts - 1, 0), 62)
    delay = min(maximum, base * 2.0**exponent)
    return min(maximum, delay * (rand or random).uniform(1 - JITTER, 1 + JITTER))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), else None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def next_attempt_at(
    now: datetime,
    attempts: int,
    base: float,
    maximum: float,
    retry_after: float | None = None,
    rand: random.Random | None = None,
) -> datetime:
    """When a request that has failed `attempts` times is due again."""
    delay = backoff_seconds(attempts, base, maximum, rand)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return now + timedelta(seconds=delay)


def is_exhausted(attempts: int, max_attempts: int) -> bool:
    """After `attempts` failed attempts, has the request used its whole budget?"""
    return attempts >= max_attempts


class Urgency(StrEnum):
    """Why a pass runs, which decides what it takes and what its failures cost.

    - DUE: the periodic job and the kick after a write take only requests that are due.
    - RECOVERY: the CRM answered again; every request is pulled forward, and a failure of
      one that was not yet due costs nothing from its budget (a flaky CRM must not burn
      through `RETRY_MAX_ATTEMPTS` in minutes instead of hours).
    - OPERATOR: someone asked for a retry now (API, CLI); every attempt counts.
    """

    DUE = "due"
    RECOVERY = "recovery"
    OPERATOR = "operator"


@dataclass(frozen=True)
class RetryPolicy:
    base: float
    maximum: float
    max_attempts: int


@dataclass(frozen=True)
class FailureVerdict:
    attempts: int
    dead: bool
    next_attempt_at: datetime


def judge_failure(
    *,
    policy: RetryPolicy,
    attempts: int,
    status: int | None,
    retry_after: float | None,
    now: datetime,
    scheduled: datetime,
    urgency: Urgency,
    rand: random.Random | None = None,
) -> FailureVerdict:
    """What a failed attempt makes of a request that had failed `attempts` times and was
    scheduled for `scheduled`."""
    if is_permanent(status):
        return FailureVerdict(attempts + 1, True, now)
    if urgency is Urgency.RECOVERY and scheduled > now:
        floor = now + timedelta(seconds=retry_after or 0)
        return FailureVerdict(attempts, False, max(scheduled, floor))
    attempts += 1
    if is_exhausted(attempts, policy.max_attempts):
        return FailureVerdict(attempts, True, now)
    due = next_attempt_at(now, attempts, policy.base, policy.maximum, retry_after, rand)
    return FailureVerdict(attempts, False, due)
