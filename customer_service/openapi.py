"""The OpenAPI document, completed: every status each operation can answer, with its media
type (`application/problem+json` for every error) and an example.

FastAPI documents what a route returns and a 422; the rest (404, 409, 412, 401, 503, ...)
comes from the domain errors raised below the routes, so it is declared here, in one table.
A schemathesis run in the tests holds the app to this document.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from customer_service.errors import PROBLEM_JSON

PROBLEM_SCHEMA = {
    "title": "Problem",
    "description": "An RFC 9457 problem document; `errors` names each bad field on 422.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

# What each error status means, and the example document shown for it.
PROBLEMS: dict[int, tuple[str, dict[str, Any]]] = {
    401: (
        "API_KEY is set and the X-API-Key header does not match it",
        {"title": "Unauthorized", "detail": "a valid X-API-Key header is required"},
    ),
    404: (
        "No such resource",
        {"title": "Not found", "detail": "customer 999 does not exist"},
    ),
    409: (
        "The email is used by another customer, or a concurrent write won",
        {
            "title": "Conflict",
            "detail": "email ada@example.com is already used by another customer",
        },
    ),
    412: (
        "If-Match names another version than the customer's",
        {"title": "Precondition failed", "detail": "customer 1 is at version 3, not 2"},
    ),
    422: (
        "Invalid input: a bad field, parameter or body (including malformed JSON)",
        {
            "title": "Unprocessable content",
            "detail": "email: value is not a valid email address",
            "errors": [{"field": "email", "message": "value is not a valid email address"}],
        },
    ),
    503: (
        "A dependency is unavailable (the database; for reconciliation, the CRM); retry later",
        {"title": "Service unavailable", "detail": "the database is unavailable; retry later"},
    ),
}

# Statuses beyond the rules in `_statuses`, by operation.
EXTRA: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/api/customers"): (409,),
    ("put", "/api/customers/{customer_id}"): (409, 412),
    ("get", "/api/reconciliation/latest"): (404,),
}

# Examples of the success bodies, by the component schema FastAPI names for them.
ADA = {
    "id": 1,
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": "+44 20 7946 0000",
    "address": {
        "street": "12 St James's Square",
        "city": "London",
        "state": None,
        "postalCode": "SW1Y 4JH",
        "country": "GB",
    },
    "version": 2,
    "createdAt": "2026-11-24T10:00:00Z",
    "updatedAt": "2026-11-24T10:05:00Z",
    "crm": {"id": "crm-7f3a", "status": "synced", "syncedVersion": 2},
}
FAILED_REQUEST = {
    "id": 12,
    "customerId": 1,
    "operation": "UPDATE",
    "status": "failed",
    "attempts": 3,
    "lastError": "CRM answered 503: the CRM is down",
    "nextAttemptAt": "2026-11-24T10:09:00Z",
    "createdAt": "2026-11-24T10:05:00Z",
    "updatedAt": "2026-11-24T10:05:04Z",
}
REPORT = {
    "checked": 1200,
    "skipped": 3,
    "missing": [17],
    "extra": ["9001"],
    "different": [42],
    "repaired": False,
    "queued": 0,
    "startedAt": "2026-11-24T10:00:00Z",
    "finishedAt": "2026-11-24T10:00:02Z",
}
EXAMPLES: dict[str, Any] = {
    "CustomerRead": ADA,
    "Page_CustomerRead_": {"items": [ADA], "total": 1},
    "FailedRequestRead": FAILED_REQUEST,
    "Page_FailedRequestRead_": {"items": [FAILED_REQUEST], "total": 1},
    "RetryReport": {"attempted": 4, "delivered": 3, "failed": 1, "dead": 0},
    "ReconciliationReport": REPORT,
}
PLAIN_EXAMPLES: dict[str, Any] = {
    "/health": {"status": "ok"},
    "/ready": {
        "status": "ready",
        "deliveries": {
            "held": True,
            "reason": "certificate",
            "detail": "CRM unreachable: ClientConnectorCertificateError: certificate verify failed",
        },
    },
}
METRICS_EXAMPLE = (
    "# HELP crm_sync_failed_requests Undelivered CRM requests by status.\n"
    "# TYPE crm_sync_failed_requests gauge\n"
    'crm_sync_failed_requests{status="dead"} 0.0\n'
)


def _header(description: str, example: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}, "example": example}


REQUEST_ID_HEADER = _header(
    "The request's id: the X-Request-ID it came with, or one made for it", "3f2b9c0e7a1d4e6f"
)
ETAG_HEADER = _header("The customer's version, quoted; If-Match takes it", '"2"')
# Headers of particular answers, by (method, path, status), beside X-Request-ID on all.
HEADERS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("post", "/api/customers", "201"): {
        "Location": _header("Where the new customer is", "/api/customers/1"),
        "ETag": ETAG_HEADER,
    },
    ("get", "/api/customers/{customer_id}", "200"): {"ETag": ETAG_HEADER},
    ("put", "/api/customers/{customer_id}", "200"): {"ETag": ETAG_HEADER},
}
STATUS_HEADERS: dict[str, dict[str, Any]] = {
    "401": {"WWW-Authenticate": _header("How to authenticate", "ApiKey")},
    "503": {"Retry-After": _header("Seconds to wait before trying again", "2")},
}


def _statuses(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses an operation can answer."""
    found: set[int] = set(EXTRA.get((method, path), ()))
    if path.startswith("/api/"):
        found.add(401)  # the dashboard asks for the key with a page of its own
    if path not in ("/health",):
        found.add(503)  # every other operation reads the database
    if operation.get("parameters") or operation.get("requestBody"):
        found.add(422)
    if "{" in path:
        found.add(404)
    return found


def _example_of(path: str, answer: dict[str, Any]) -> Any:
    if path in PLAIN_EXAMPLES:
        return PLAIN_EXAMPLES[path]
    schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
    ref = str(schema.get("$ref", ""))
    return EXAMPLES.get(ref.rsplit("/", 1)[-1])


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the error answers and the examples to a generated OpenAPI document."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            answers: dict[str, Any] = operation.setdefault("responses", {})
            for answer in answers.values():
                content = answer.get("content", {})
                example = _example_of(path, answer)
                if example is not None and "application/json" in content:
                    content["application/json"]["example"] = example
                for media_type, body in content.items():
                    if media_type.startswith("text/plain"):
                        body["example"] = METRICS_EXAMPLE
            for status in sorted(_statuses(method, path, operation)):
                description, example = PROBLEMS[status]
                answers[str(status)] = {
                    "description": description,
                    "content": {
                        PROBLEM_JSON: {
                            "schema": problem_ref,
                            "example": {"type": "about:blank", "status": status, **example},
                        }
                    },
                }
            for code, answer in answers.items():
                headers = answer.setdefault("headers", {})
                headers["X-Request-ID"] = REQUEST_ID_HEADER
                headers.update(STATUS_HEADERS.get(code, {}))
                headers.update(HEADERS.get((method, path, code), {}))
    return schema


def install(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
