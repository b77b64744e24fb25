"""Domain errors and their problem+json rendering (RFC 9457), in one place."""

import logging
from typing import Any

from asyncpg import InterfaceError as PostgresInterfaceError
from asyncpg import PostgresError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
# What a client is told to wait after a 503 for a database that is down or out of
# connections.
RETRY_AFTER_SECONDS = 2

# A database that is down, refuses a connection (asyncpg raises its own errors when it
# connects: "too many clients already", "the database system is starting up") or has
# no free connection in the pool within DATABASE_POOL_TIMEOUT_SECONDS
# (sqlalchemy.exc.TimeoutError). A connection the server closed just before it was used
# can surface as asyncpg's InternalClientError ("cannot switch to state ..."), which
# SQLAlchemy raises as InternalError.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    InternalError,
    PoolTimeout,
    PostgresError,
    PostgresInterfaceError,
    OSError,
    TimeoutError,
)
log = logging.getLogger(__name__)


class DomainError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    status = 404
    title = "Not found"


class CustomerNotFound(NotFound):
    def __init__(self, customer_id: int) -> None:
        super().__init__(f"customer {customer_id} does not exist")


class RequestNotFound(NotFound):
    def __init__(self, request_id: int) -> None:
        super().__init__(f"failed request {request_id} does not exist")


class Conflict(DomainError):
    status = 409
    title = "Conflict"


class EmailTaken(Conflict):
    def __init__(self, email: str) -> None:
        super().__init__(f"email {email} is already used by another customer")


class ConcurrentUpdate(Conflict):
    def __init__(self, customer_id: int) -> None:
        super().__init__(f"customer {customer_id} was changed by another request; read it again")


class VersionMismatch(DomainError):
    status = 412
    title = "Precondition failed"


class Unauthorized(DomainError):
    status = 401
    title = "Unauthorized"


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_handlers(app: FastAPI) -> None:
    """Every error leaves as problem+json; none as a stack trace."""

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field_name(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Unprocessable content", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot even decode: bad input like any other.
            errors = [{"field": "body", "message": str(exc.detail)}]
            return problem(422, "Unprocessable content", f"body: {exc.detail}", errors=errors)
        return problem(exc.status_code, str(exc.detail), str(exc.detail))

    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        response = problem(503, "Service unavailable", "the database is unavailable; retry later")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    # Nothing was written: the write's transaction never committed.
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "Internal server error", "an unexpected error occurred")
