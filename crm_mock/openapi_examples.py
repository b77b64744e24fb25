"""Examples for the CRM mock's OpenAPI document: one for every answer of every operation."""

from typing import Any

RECORD = {
    "id": "5f0c2e9a-1d4b-4c55-9a61-3b1f3f0c7d21",
    "externalId": "42",
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": "+44 20 7946 0000",
    "address": "12 St James's Square, London, SW1Y 4JH, GB",
    "createdAt": "2026-11-24T10:00:00Z",
    "updatedAt": "2026-11-24T10:00:00Z",
}
FAULTS = {
    "down": False,
    "errorRate": 0.0,
    "statusCode": 503,
    "latencyMs": 0,
    "retryAfterSeconds": None,
    "rateLimitPerSecond": None,
}
LOG_ENTRY = {
    "method": "POST",
    "path": "/api/crm/customers",
    "status": 201,
    "externalId": "42",
    "idempotencyKey": "0b6f4f52-6d0e-4c1e-8f3e-5c4f7f6b2a10",
    "body": {k: v for k, v in RECORD.items() if k not in ("id", "createdAt", "updatedAt")},
    "receivedAt": "2026-11-24T10:00:00Z",
}

REPLACED = {
    **RECORD,
    "id": "crm_6a1d0f3b9c2e4d57",
    "externalId": "43",
    "firstName": "Grace",
    "lastName": "Hopper",
    "email": "grace@example.com",
    "phone": None,
    "address": "Arlington, US",
    "createdAt": "2026-11-20T09:30:00Z",
}
BATCH_ERRORS = [
    {
        "index": 2,
        "externalId": "44",
        "status": 422,
        "detail": "invalid input: email: String should match pattern '^[^@\\s]+@[^@\\s]+$'",
    },
    {
        "index": 3,
        "externalId": "42",
        "status": 409,
        "detail": "externalId 42 is named by input 0 of this batch already",
    },
]
UNKNOWN_ID = "crm_0000000000000000"

# By the component schema FastAPI names for a success body.
BODIES: dict[str, Any] = {
    "CrmCustomer": RECORD,
    "CrmCustomerPage": {"items": [RECORD], "total": 1},
    "CrmCustomerBatchResults": {"results": [RECORD, REPLACED]},
    "CrmCustomerBatchPartial": {"results": [RECORD, REPLACED], "errors": BATCH_ERRORS},
    "CrmCustomerBatchDeleted": {"deleted": [RECORD["id"]], "notFound": [UNKNOWN_ID]},
    "CrmCustomerBatchDeletePartial": {
        "deleted": [RECORD["id"]],
        "notFound": [UNKNOWN_ID],
        "errors": [
            {
                "index": 2,
                "id": REPLACED["id"],
                "externalId": "43",
                "status": 503,
                "detail": "fault injected: a random failure",
            }
        ],
    },
    "FaultSettings": FAULTS,
    "RequestLogPage": {"items": [LOG_ENTRY], "total": 1},
    "HealthRead": {"status": "ok"},
    "CallsRead": {
        "inFlight": 1,
        "calls": [{"method": "POST", "path": "/api/crm/customers", "count": 1}],
    },
}

# The detail shown in each error status's example.
PROBLEM_DETAILS = {
    401: "a valid bearer token is required",
    404: "no CRM customer with id 5f0c2e9a-1d4b-4c55-9a61-3b1f3f0c7d21",
    409: "externalId 42 belongs to another record",
    422: "invalid input: email",
    429: "rate limit exceeded",
    503: "the CRM is down (a simulated fault)",
}


def body_example(schema: dict[str, Any]) -> Any:
    ref = str(schema.get("$ref", ""))
    return BODIES.get(ref.rsplit("/", 1)[-1])


def problem_example(status: int, title: str) -> dict[str, Any]:
    example: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": PROBLEM_DETAILS.get(status, title),
    }
    if status == 422:
        example["errors"] = [{"field": "email", "message": "String should match pattern"}]
    return example
