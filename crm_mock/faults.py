"""Fault injection: the switches that make the CRM slow, flaky or down.

The settings live in memory on the running app (`CrmRuntime.faults`), so a restart of the
mock resets them to "healthy". That is on purpose: stopping the process is the other kind of
downtime, and a fresh process should answer normally.
"""

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

MAX_LATENCY_MS = 600_000
MAX_DAILY_LIMIT = 1_000_000_000


class FaultSettings(BaseModel):
    """The fault switches as `GET /api/crm/_faults` shows them (camelCase on the wire)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    down: bool = False
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    status_code: int = Field(default=503, ge=400, le=599)
    latency_ms: int = Field(default=0, ge=0, le=MAX_LATENCY_MS)
    retry_after_seconds: int | None = Field(default=None, ge=0)
    rate_limit_per_second: int | None = Field(default=None, ge=1, le=1_000_000)
    # Optional, for the HubSpot and Salesforce faces only (README: "The CRM mock's HubSpot
    # face"): calls a face admits per UTC day. Shown only while set, so the switch keeps
    # the six fields of the contract otherwise.
    daily_limit: int | None = Field(
        default=None, ge=1, le=MAX_DAILY_LIMIT, exclude_if=lambda value: value is None
    )


class FaultUpdate(BaseModel):
    """The body of `PUT /api/crm/_faults`: any subset of the fields; the others keep their value.

    Only `retryAfterSeconds`, `rateLimitPerSecond` and `dailyLimit` may be null (to stop
    sending `Retry-After`, to lift a limit); unknown fields are refused so a typo does not
    silently change nothing.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    down: bool | None = None
    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    status_code: int | None = Field(default=None, ge=400, le=599)
    latency_ms: int | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    retry_after_seconds: int | None = Field(default=None, ge=0)
    rate_limit_per_second: int | None = Field(default=None, ge=1, le=1_000_000)
    daily_limit: int | None = Field(default=None, ge=1, le=MAX_DAILY_LIMIT)

    @field_validator("down", "error_rate", "status_code", "latency_ms", mode="before")
    @classmethod
    def _refuse_null(cls, value: Any) -> Any:
        # Runs only for fields present in the body: an absent field keeps its value.
        if value is None:
            raise ValueError("may not be null")
        return value


def apply_fault_update(current: FaultSettings, update: FaultUpdate) -> FaultSettings:
    """The settings after `update`: the fields it sets replace those of `current`."""
    return current.model_copy(update=update.model_dump(exclude_unset=True))


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """The answer a faulted call gets instead of being executed."""

    status_code: int
    retry_after_seconds: int | None
    reason: str


def decide_fault(settings: FaultSettings, draw: float | None) -> InjectedFault | None:
    """The fault to answer with, or None to execute the call.

    `draw` is a uniform random number in [0, 1): a call fails when the CRM is `down`, or when
    `draw < errorRate` (so an error rate of 0 never fails and 1 always does). None: no draw,
    only `down` fails the call (a batch call, whose records draw one by one).
    """
    if settings.down:
        reason = "the CRM is down"
    elif draw is not None and draw < settings.error_rate:
        reason = "a random failure"
    else:
        return None
    return InjectedFault(
        status_code=settings.status_code,
        retry_after_seconds=settings.retry_after_seconds,
        reason=reason,
    )


@dataclass(slots=True)
class RateWindow:
    """The calls admitted in the current wall-clock second, for `rateLimitPerSecond`."""

    second: int = -1
    count: int = 0

    def admit(self, now: float, limit: int | None) -> bool:
        """Count a call at `now` (seconds) and say whether it is within `limit` calls in
        its second; a refused call is not counted (it did nothing)."""
        if limit is None:
            return True
        second = int(now)
        if second != self.second:
            self.second, self.count = second, 0
        if self.count >= limit:
            return False
        self.count += 1
        return True

    def used(self, now: float) -> int:
        """The calls admitted in the second of `now`."""
        return self.count if self.second == int(now) else 0
