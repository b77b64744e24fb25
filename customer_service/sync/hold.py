"""Why deliveries are held: a failure that speaks for the CRM as a whole, named.

When the CRM as a whole cannot take our calls, live deliveries stop calling it and a
probe asks, one call at a time, whether it is back (`delivery.CrmHealth`). An operator
then needs the cause, not only "CRM down": it is shown once in the log when it changes,
in `/ready`'s body, on the dashboard, in the `crm_sync_deliveries_held` metric, and on
the `lastError` of every request held without an attempt. The kinds:

- `unreachable`: no answer (connection refused, DNS, timeout, the connection broken);
- `certificate`: the CRM's TLS certificate was not trusted (`CRM_CA_BUNDLE`,
  `SSL_CERT_FILE`);
- `credentials`: the CRM refused our credentials (401, 403): no request is `dead` for it;
- `rate_limited`: the CRM answered 429 (or its `Retry-After` still runs);
- `crm_error`: the CRM (or a proxy or load balancer before it) answered 408, 502, 503
  or 504.
"""

from dataclasses import dataclass
from enum import StrEnum


class HoldKind(StrEnum):
    UNREACHABLE = "unreachable"
    CERTIFICATE = "certificate"
    CREDENTIALS = "credentials"
    RATE_LIMITED = "rate_limited"
    CRM_ERROR = "crm_error"


@dataclass(frozen=True)
class HoldReason:
    kind: HoldKind
    detail: str


# Answers that speak for the whole CRM, by what they say of it.
CRM_WIDE_STATUSES: dict[int, HoldKind] = {
    401: HoldKind.CREDENTIALS,
    403: HoldKind.CREDENTIALS,
    408: HoldKind.CRM_ERROR,
    429: HoldKind.RATE_LIMITED,
    502: HoldKind.CRM_ERROR,
    503: HoldKind.CRM_ERROR,
    504: HoldKind.CRM_ERROR,
}


def hold_kind(status: int | None, unanswered: HoldKind | None = None) -> HoldKind | None:
    """The kind of hold a failed call calls for, or None when it concerns one request only.

    `status` None is a call with no answer; `unanswered` says why when the caller knows
    (a certificate refused, a 429 pause still running), else it is `unreachable`."""
    if status is None:
        return unanswered or HoldKind.UNREACHABLE
    return CRM_WIDE_STATUSES.get(status)


HELD_PREFIX = "deliveries held: "


def held_error(hold: HoldReason) -> str:
    """The `lastError` of a request held, never attempted, while `hold` lasts."""
    return HELD_PREFIX + hold.detail
