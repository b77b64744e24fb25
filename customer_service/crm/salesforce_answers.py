"""What Salesforce's answers say (pure, no I/O): the error code of a refusal, what each
record's result of a collection means for its customer, how long `REQUEST_LIMIT_EXCEEDED`
holds deliveries, and an answer in words an operator reads in `lastError`.

Read in Salesforce's own pages (our words, not theirs):

- a refused call answers a JSON list of `{message, errorCode, fields}`; 401 is a session
  (access token) expired or invalid (`INVALID_SESSION_ID`), 403 a refused request, and
  with `REQUEST_LIMIT_EXCEEDED` the org's API limits are spent:
  https://developer.salesforce.com/docs/atlas.en-us.264.0.api_rest.meta/api_rest/errorcodes.htm
- the limits behind `REQUEST_LIMIT_EXCEEDED`: the org's total API requests over a rolling
  24 hours, and long-running concurrent requests; no `Retry-After` is promised:
  https://developer.salesforce.com/docs/platform/salesforce-app-limits-cheatsheet/guide/salesforce-app-limits-platform-api.html
- sObject Collections answer 200 for a well-formed call with one result per record, in
  order (`id`, `success`, `errors` of `{statusCode, message, fields}`, and `created` for
  an upsert), 400 for a call that is not well formed:
  https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-upsert.html
  and https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-delete.html
- the record status codes are the `StatusCode` enumeration of the org's WSDL:
  https://developer.salesforce.com/docs/platform/apex-ref/references/apex-ref/apex-methods-system-database-error.html
  (listed e.g. in
  https://docs.jboss.org/teiid/7.6.0.Final/apidocs/com/sforce/soap/partner/StatusCode.html
  ).
  Most say the record's data is refused (a validation rule, a required field missing, a
  value too long or of the wrong kind, a duplicate): no retry changes that, so a code
  not known to be transient makes the request `dead`, where an operator sees it and can
  replay it. Known transient: `UNABLE_TO_LOCK_ROW` (another transaction holds the row or
  its parent, for up to about ten seconds), Salesforce's own trouble
  (`SERVER_UNAVAILABLE`, `UNKNOWN_EXCEPTION`, `REQUEST_RUNNING_TOO_LONG`), a record
  rolled back for another's failure, and the API limit.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from customer_service.crm.hubspot_answers import redact as redact_all
from customer_service.sync.retry import parse_retry_after

SESSION_INVALID = "INVALID_SESSION_ID"
LIMIT_EXCEEDED = "REQUEST_LIMIT_EXCEEDED"
# A record of a delete that no longer exists: gone already, which is what was asked.
GONE = frozenset({"ENTITY_IS_DELETED"})
# Record codes worth another try, with the HTTP status they stand for in the outbox
# (`retry.is_permanent`: none of these is permanent). Any other code is permanent (400).
TRANSIENT = {
    "UNABLE_TO_LOCK_ROW": 409,
    "ALL_OR_NONE_OPERATION_ROLLED_BACK": 409,
    "SERVER_UNAVAILABLE": 503,
    "UNKNOWN_EXCEPTION": 500,
    "REQUEST_RUNNING_TOO_LONG": 503,
    "QUERY_TIMEOUT": 503,
    LIMIT_EXCEEDED: 429,
}
PERMANENT_STATUS = 400
# REQUEST_LIMIT_EXCEEDED without a Retry-After (Salesforce promises none) holds deliveries
# this long before the probe asks again: the 24-hour allocation frees up as old calls
# leave its window, the concurrent one within seconds.
LIMIT_HOLD_SECONDS = 300.0
# The longest detail kept from an answer.
MAX_DETAIL = 300


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def error_code(body: Any) -> str | None:
    """The `errorCode` of a refused call (the first of its list), or an OAuth `error`."""
    first = body[0] if isinstance(body, list) and body else body
    if isinstance(first, Mapping):
        code = first.get("errorCode") or first.get("error")
        if isinstance(code, str) and code:
            return code
    return None


def message_of(body: Any) -> str | None:
    first = body[0] if isinstance(body, list) and body else body
    if isinstance(first, Mapping):
        message = first.get("message") or first.get("error_description")
        if isinstance(message, str) and message:
            return _short(message)
    return None


def describe(status: int, body: Any, not_json: str | None = None, what: str = "Salesforce") -> str:
    """An answer as an operator reads it in `lastError`: status, error code, message."""
    text = f"{what} answered {status}"
    code = error_code(body)
    if code:
        text += f" {code}"
    message = message_of(body)
    if message:
        return f"{text}: {message}"
    if not_json is not None:
        return f"{text} with a body that is not JSON ({not_json})"
    return text


def limit_hold_seconds(retry_after: str | None, now: datetime) -> float:
    """How long `REQUEST_LIMIT_EXCEEDED` holds deliveries: its Retry-After when it names
    one, else `LIMIT_HOLD_SECONDS`."""
    stated = parse_retry_after(retry_after, now)
    if stated is not None and stated > 0:
        return stated
    return LIMIT_HOLD_SECONDS


@dataclass(frozen=True)
class RecordError:
    """One record's refusal: the status it stands for in the outbox, and why."""

    status: int
    code: str
    detail: str


def record_error(result: Any) -> RecordError | None:
    """None for a record Salesforce took (`success`), else its refusal: its first error's
    code, transient or permanent (see the module's docstring)."""
    if isinstance(result, Mapping) and result.get("success") is True:
        return None
    errors = result.get("errors") if isinstance(result, Mapping) else None
    first = errors[0] if isinstance(errors, list) and errors else None
    if not isinstance(first, Mapping):
        return RecordError(502, "", "Salesforce answered a result without success or errors")
    code = str(first.get("statusCode") or first.get("errorCode") or "UNKNOWN")
    message = first.get("message")
    fields = first.get("fields")
    named = f" [{', '.join(map(str, fields))}]" if isinstance(fields, list) and fields else ""
    status = TRANSIENT.get(code, PERMANENT_STATUS)
    text = f"Salesforce refused this record ({code}){named}"
    if isinstance(message, str) and message:
        text += f": {_short(message)}"
    return RecordError(status, code, text)


def record_id(result: Any) -> str | None:
    if isinstance(result, Mapping) and result.get("id"):
        return str(result["id"])
    return None


def soql_string(value: str) -> str:
    """A value as a SOQL string literal (quotes and backslashes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (the client secret, every access token) replaced."""
    return redact_all(text, secrets)
