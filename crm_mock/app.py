"""`create_app`: the CRM mock as a FastAPI app, with a lifespan owning the database engine."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crm_mock import store
from crm_mock.config import CrmSettings
from crm_mock.deps import CrmRuntime
from crm_mock.gateway import CustomerCallsGateway
from crm_mock.problems import field_errors, problem_response
from crm_mock.routes import admin_router, customers_router, health_router

logger = logging.getLogger(__name__)


def create_app(settings: CrmSettings | None = None) -> FastAPI:
    """The CRM mock app; settings are read from the environment when not given.

    The lifespan creates the engine and any missing table, and puts a `CrmRuntime` (engine,
    sessionmaker, fault switches, idempotency locks) on `app.state.runtime`.
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
            logger.info("CRM mock ready, data in %s", engine.url.render_as_string())
            yield
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
    app.add_middleware(CustomerCallsGateway)
    _add_problem_handlers(app)
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
        return problem_response(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(store.CustomerNotFound)
    async def _not_found(_request: Request, error: store.CustomerNotFound) -> JSONResponse:
        return problem_response(404, str(error))

    @app.exception_handler(store.ExternalIdTaken)
    async def _taken(_request: Request, error: store.ExternalIdTaken) -> JSONResponse:
        return problem_response(409, str(error))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _error: Exception) -> JSONResponse:
        # Starlette logs the exception itself; the client gets the same shape as other errors.
        return problem_response(500, "the CRM failed to process the request")
