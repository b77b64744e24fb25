"""RFC 9457 problem documents (`application/problem+json`), the shape of every error answer."""

import json
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

from crm_mock.schemas import FieldError, Problem

PROBLEM_MEDIA_TYPE = "application/problem+json"

# Where a validation error was found, as FastAPI reports it; not part of the field's name.
_LOCATION_PREFIXES = frozenset({"body", "query", "path", "header", "cookie"})


def status_title(status: int) -> str:
    """The reason phrase of a status code, or a generic title for a non-standard code."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Error" if status < 500 else "Server Error"


def build_problem(status: int, detail: str, errors: Sequence[FieldError] | None = None) -> Problem:
    """A problem of the generic `about:blank` type, titled after its status."""
    return Problem(
        title=status_title(status), status=status, detail=detail, errors=list(errors or []) or None
    )


def problem_bytes(problem: Problem) -> bytes:
    """The JSON body of a problem (no `errors` member unless there are errors)."""
    return json.dumps(problem.model_dump(exclude_none=True), separators=(",", ":")).encode()


def problem_response(
    status: int,
    detail: str,
    *,
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    problem = build_problem(status, detail, errors)
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


def field_errors(validation_errors: Sequence[Any]) -> list[FieldError]:
    """FastAPI's validation errors as `{field, message}` pairs named as on the wire.

    `("body", "firstName")` becomes `firstName`, `("query", "limit")` becomes `limit`, a nested
    location is joined with dots, and an unreadable body is reported as `body`.
    """
    result = []
    for error in validation_errors:
        location = [str(part) for part in error.get("loc", ())]
        if len(location) > 1 and location[0] in _LOCATION_PREFIXES:
            location = location[1:]
        if error.get("type") == "json_invalid":
            location = ["body"]
        result.append(FieldError(field=".".join(location) or "body", message=str(error["msg"])))
    return result
