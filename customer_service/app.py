"""`create_app(settings)`: the customer service with its engine, CRM client and retry job."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from customer_service.config import Settings
from customer_service.customers.router import router as customers_router
from customer_service.dashboard.router import router as dashboard_router
from customer_service.db import create_sessionmaker, engines_for
from customer_service.deps import ApiLoad, require_api_key
from customer_service.errors import install_handlers
from customer_service.metrics import Metrics
from customer_service.openapi import install as install_openapi
from customer_service.ops import router as ops_router
from customer_service.reconciliation.periodic import ReconcileLoop
from customer_service.reconciliation.reconciler import Reconciler
from customer_service.reconciliation.router import router as reconciliation_router
from customer_service.request_id import RequestIdMiddleware
from customer_service.sync.connector import build_connector
from customer_service.sync.cpu_share import CpuShare
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.router import router as failed_router
from customer_service.sync.scheduler import RetryJob, build_scheduler


def create_app(settings: Settings | None = None, *, run_scheduler: bool = True) -> FastAPI:
    """The customer service; `run_scheduler=False` leaves the periodic retry job off
    (tests drive passes themselves; immediate delivery after a write still runs)."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The API's pool and the sync engine's (one engine on SQLite): `engines_for`.
        engine, sync_engine = engines_for(settings)
        sessionmaker = create_sessionmaker(engine)
        sync_sessionmaker = create_sessionmaker(sync_engine)
        # The one way out SYNC_MODE names (the CRM mock's API, or Kafka).
        connector = build_connector(settings, sync_sessionmaker, on_call=metrics.observe_crm_call)
        api_load = ApiLoad()
        delivery = DeliveryEngine(
            sync_sessionmaker,
            connector,
            settings,
            enabled=settings.sync_enabled,
            on_outcome=metrics.observe_delivery,
            api_load=api_load,
            cpu_share=CpuShare(),
        )
        retry_job = RetryJob(delivery, settings, connector)
        app.state.settings = settings
        app.state.api_load = api_load
        app.state.engine = engine
        app.state.sessionmaker = sessionmaker
        app.state.delivery = delivery
        app.state.retry_job = retry_job
        reconciler = Reconciler(
            sessionmaker,
            connector.reader(),
            kick=delivery.kick,
            confirms_later=connector.confirms_later,
        )
        reconciler.listeners.append(metrics.observe_reconciliation)
        app.state.reconciler = reconciler
        interval = settings.reconcile_interval_seconds if run_scheduler else 0.0
        reconcile_loop = ReconcileLoop(reconciler, interval)
        reconcile_loop.start()
        background = run_scheduler and settings.sync_enabled
        # The probe runs with the scheduler: only then may the breaker hold kicks back.
        delivery.health.probing = background
        scheduler = build_scheduler(retry_job, settings) if background else None
        if scheduler is not None:
            scheduler.start()
        await connector.start(serving=settings.sync_enabled)
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            await reconcile_loop.close()
            await delivery.close()
            await retry_job.close()
            await connector.close()
            await engine.dispose()
            if sync_engine is not engine:
                await sync_engine.dispose()

    app = FastAPI(
        title="crm-sync customer service",
        version="0.1.0",
        lifespan=lifespan,
        description="Customers, kept in step with the CRM through a durable outbox.",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    install_openapi(app)
    app.include_router(ops_router)
    api_key = [Depends(require_api_key)]
    app.include_router(customers_router, dependencies=api_key)
    app.include_router(failed_router, dependencies=api_key)
    app.include_router(reconciliation_router, dependencies=api_key)
    app.include_router(dashboard_router)
    return app
