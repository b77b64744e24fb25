"""`create_app`: the CRM mock as a FastAPI app, with a lifespan owning the database engine."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crm_mock import hubspot, ledger, salesforce, store
from crm_mock.config import CrmSettings
from crm_mock.deps import CrmRuntime
from crm_mock.gateway import CustomerCallsGateway, FaceCallsGateway
from crm_mock.openapi_examples import body_example, problem_example
from crm_mock.problems import PROBLEM_MEDIA_TYPE, field_errors, problem_response, status_title
from crm_mock.routes import admin_router, customers_router, health_router
from crm_mock.schemas import FieldError

logger = logging.getLogger(__name__)


def create_app(settings: CrmSettings | None = None) -> FastAPI:
    """The CRM mock app; settings are read from the environment when not given.

    The lifespan creates the engine and any missing table, and puts a `CrmRuntime` (engine,
    sessionmaker, fault switches, idempotency locks, the journal writing the request log) on
    `app.state.runtime`.
    """
    resolved = settings if settings is not None else CrmSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = store.create_engine(resolved.crm_database_url)
        try:
            await store.create_tables(engine)
            app.state.runtime = CrmRuntime(
                settings=resolved, engine=engine, sessionmaker=store.create_sessionmaker(engine)
            )
            # A fresh process is a healthy CRM, for its Kafka consumer too.
            await ledger.share_faults(app.state.runtime.sessionmaker, app.state.runtime.faults)
            app.state.runtime.journal.start()
            logger.info("CRM mock ready, data in %s", engine.url.render_as_string())
            try:
                yield
            finally:
                await app.state.runtime.journal.close()
        finally:
            await engine.dispose()

    app = FastAPI(
        title="CRM mock",
        summary="A stand-in for a third-party CRM, with switches to make it slow or down.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(customers_router)
    app.include_router(admin_router)
    app.include_router(health_router)
    app.include_router(hubspot.router)
    app.include_router(salesforce.router)
    app.include_router(salesforce.admin_router)
    app.add_middleware(CustomerCallsGateway)
    # The faces of real CRMs (SPEC 4, last paragraph): the same switch, log and token.
    app.add_middleware(FaceCallsGateway, faces=[hubspot.HUBSPOT_FACE, salesforce.SALESFORCE_FACE])
    _add_problem_handlers(app)
    _document_problems(app)
    return app


def _add_problem_handlers(app: FastAPI) -> None:
    """Every error answer is application/problem+json (RFC 9457)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        errors = field_errors(error.errors())
        fields = ", ".join(sorted({e.field for e in errors}))
        return problem_response(422, f"invalid input: {fields}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400:
            # A body that cannot even be decoded is invalid input like any other.
            errors = [FieldError(field="body", message=str(error.detail))]
            return problem_response(422, f"invalid input: body: {error.detail}", errors=errors)
        return problem_response(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(store.CustomerNotFound)
    async def _not_found(_request: Request, error: store.CustomerNotFound) -> JSONResponse:
        return problem_response(404, str(error))

    @app.exception_handler(store.ExternalIdTaken)
    async def _taken(_request: Request, error: store.ExternalIdTaken) -> JSONResponse:
        return problem_response(409, str(error))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, _error: Exception) -> JSONResponse:
        # Starlette re-raises after answering, so the traceback still reaches the server log.
        return problem_response(500, "the CRM failed to process the request")


def _document_problems(app: FastAPI) -> None:
    """Make `/openapi.json` show answers as they are sent: errors as problem+json, not
    JSON, and an example for each."""
    problem_schema = {"$ref": "#/components/schemas/Problem"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            for operation in _operations(schema):
                for code, answer in operation.get("responses", {}).items():
                    content = answer.get("content", {})
                    if code == "422" or PROBLEM_MEDIA_TYPE in content:
                        example = problem_example(int(code), status_title(int(code)))
                        answer["content"] = {
                            PROBLEM_MEDIA_TYPE: {"schema": problem_schema, "example": example}
                        }
                    elif "application/json" in content:
                        json_body = content["application/json"]
                        json_body["example"] = body_example(json_body.get("schema", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [operation for path in schema.get("paths", {}).values() for operation in path.values()]
