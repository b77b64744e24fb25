"""What HubSpot's answers say (pure, no I/O): rate-limit headers, which limit a 429 is,
when the daily limit resets, which records a batch's errors name, and the status each
error stands for.

Read in HubSpot's own pages and its clients' threads (our words, not theirs):

- the usage guidelines: a 429 body names the limit hit in `policyName` (the daily one,
  `DAILY`, or the rolling ten-second one); the daily limit resets at midnight in the
  account's time zone; every answer carries `X-HubSpot-RateLimit-Max`, `-Remaining` and
  `-Interval-Milliseconds` (the window those two count in), and `-Daily` /
  `-Daily-Remaining` for token-authenticated apps:
  https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines ,
  https://developers.hubspot.com/apisbytier and
  https://developers.hubspot.com/changelog/2018-11-06-rate-limit-information-headers-will-be-included-in-http-responses
- the ten-second 429 as HubSpot's Python client users see it (`policyName`
  `TEN_SECONDLY_ROLLING`, no `Retry-After` promised):
  https://github.com/HubSpot/hubspot-api-python/issues/117
- batch upsert: 200 (or 201: https://github.com/HubSpot/hubspot-api-python/issues/448)
  with `results`, 207 adding `errors` (each with `category`, `message`, `context`):
  https://developers.hubspot.com/docs/api-reference/latest/crm/objects/contacts/batch/upsert-contacts
- a batch refused whole for one input: 400 `VALIDATION_ERROR`, or 409 `CONFLICT` for a
  contact that exists already, naming only the first one found:
  https://github.com/HubSpot/hubspot-api-python/issues/51

The daily reset: HubSpot's is midnight in the account's time zone, which a contacts
token cannot read. A 429 `DAILY` with `Retry-After` is believed; without one, deliveries
hold until the next quarter of an hour in UTC (every time zone's midnight falls on one),
when the probe asks again: at most 96 refused calls a day, far under the 5 % of error
answers HubSpot's guidelines allow.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from customer_service.sync.retry import parse_retry_after

DAILY = "DAILY"
TEN_SECONDLY = "TEN_SECONDLY_ROLLING"
# Headers HubSpot sends while no limit is set in the mock (and never for real): no limit.
NO_LIMIT = 1_000_000_000
# A quarter of an hour: the granularity of time-zone offsets, so of midnights in UTC.
RESET_GRANULARITY_SECONDS = 900
# The longest detail kept from an answer (a 400 lists every bad value).
MAX_DETAIL = 300
# Batch errors by category, when an error names no status of its own. CONFLICT and the
# rest are worth another try; a VALIDATION_ERROR or a missing object is not.
CATEGORY_STATUS = {
    "VALIDATION_ERROR": 400,
    "INVALID_EMAIL": 400,
    "PROPERTY_DOESNT_EXIST": 400,
    "INVALID_AUTHENTICATION": 401,
    "MISSING_SCOPES": 403,
    "OBJECT_NOT_FOUND": 404,
    "CONFLICT": 409,
    "RATE_LIMITS": 429,
}
# Whole-call answers that refuse the batch for what some input holds: split it (bisect)
# until the input refused is alone.
SPLIT_STATUSES = frozenset({400, 409, 422})


@dataclass(frozen=True)
class RateHeaders:
    """The `X-HubSpot-RateLimit-*` headers of one answer (None where absent)."""

    max: int | None
    remaining: int | None
    interval_seconds: float | None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> "RateHeaders":
        def number(name: str) -> int | None:
            value = headers.get(name)
            return int(value) if value is not None and value.strip().isdigit() else None

        interval = number("X-HubSpot-RateLimit-Interval-Milliseconds")
        return cls(
            number("X-HubSpot-RateLimit-Max"),
            number("X-HubSpot-RateLimit-Remaining"),
            None if not interval else interval / 1000,
        )

    @property
    def limited(self) -> bool:
        """Whether they state a limit to pace by."""
        return bool(self.max and self.interval_seconds and self.max < NO_LIMIT)


def policy_of(body: Any) -> str | None:
    """Which limit a 429 says was hit (`DAILY`, `TEN_SECONDLY_ROLLING`, ...), if it says."""
    if isinstance(body, dict) and isinstance(body.get("policyName"), str):
        return str(body["policyName"])
    return None


def daily_reset_seconds(retry_after: str | None, now: datetime) -> float:
    """Seconds until the daily limit is worth asking again: the answer's Retry-After,
    else the next quarter of an hour in UTC (see the module's docstring)."""
    stated = parse_retry_after(retry_after, now)
    if stated is not None and stated > 0:
        return stated
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = (now - midnight).total_seconds()
    quarters = math.floor(elapsed / RESET_GRANULARITY_SECONDS) + 1
    reset = midnight + timedelta(seconds=quarters * RESET_GRANULARITY_SECONDS)
    return max(1.0, (reset - now).total_seconds())


def message_of(body: Any) -> str | None:
    """The message of a HubSpot error document, shortened."""
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or body.get("title")
        if isinstance(message, str) and message:
            text = " ".join(message.split())
            return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."
    return None


def describe(status: int, body: Any, not_json: str | None = None) -> str:
    """An answer as an operator reads it in `lastError`: status, category, message."""
    text = f"HubSpot answered {status}"
    if isinstance(body, dict):
        kind = body.get("policyName") or body.get("category") or body.get("errorType")
        if isinstance(kind, str) and kind:
            text += f" {kind}"
        message = message_of(body)
        if message:
            return f"{text}: {message}"
    if not_json is not None:
        return f"{text} with a body that is not JSON ({not_json})"
    return text


def _status_of_error(error: Mapping[str, Any]) -> int:
    context = error.get("context")
    if isinstance(context, Mapping):
        stated = context.get("statusCode")
        values = stated if isinstance(stated, list) else [stated]
        for value in values:
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                return int(value)
    category = error.get("category")
    # Another category (INTERNAL_ERROR, ...) is HubSpot's own trouble: worth another try.
    return CATEGORY_STATUS.get(category, 500) if isinstance(category, str) else 500


def _ids_of_error(error: Mapping[str, Any]) -> list[str]:
    context = error.get("context")
    ids: list[str] = []
    if isinstance(context, Mapping) and isinstance(context.get("ids"), list):
        ids = [str(value) for value in context["ids"]]
    if isinstance(error.get("id"), str | int):
        ids.append(str(error["id"]))
    return ids


@dataclass(frozen=True)
class RecordError:
    status: int
    detail: str


def record_errors(body: Any) -> dict[str, RecordError]:
    """The records a 207 names as failed, by the id they were sent under (the id
    property's value for an upsert or a read, the HubSpot id for an archive)."""
    errors: dict[str, RecordError] = {}
    items = body.get("errors") if isinstance(body, dict) else None
    for error in items if isinstance(items, list) else []:
        if not isinstance(error, Mapping):
            continue
        status = _status_of_error(error)
        category = error.get("category") if isinstance(error.get("category"), str) else None
        message = message_of(error) or "refused in a batch"
        detail = f"HubSpot refused this record ({status}{' ' + category if category else ''})"
        for record_id in _ids_of_error(error):
            errors.setdefault(record_id, RecordError(status, f"{detail}: {message}"))
    return errors


def results_by(body: Any, key: Any) -> dict[str, dict[str, Any]]:
    """A batch answer's `results`, by `key(result)` (results come in no promised order)."""
    found: dict[str, dict[str, Any]] = {}
    items = body.get("results") if isinstance(body, dict) else None
    for result in items if isinstance(items, list) else []:
        if isinstance(result, dict) and result.get("id") is not None:
            found.setdefault(str(key(result)), result)
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced (an answer or an exception might echo one)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text
