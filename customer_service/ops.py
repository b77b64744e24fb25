"""Liveness, readiness and Prometheus metrics."""

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from customer_service.columns import utc_now
from customer_service.errors import problem
from customer_service.metrics import Metrics
from customer_service.sync import repository, unconfirmed

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", response_model=None)
async def ready(request: Request) -> dict[str, Any] | JSONResponse:
    """200 while the database answers. The body also says whether this replica holds its
    CRM deliveries, and why (`sync.hold`): the service itself is ready all the same."""
    try:
        async with request.app.state.sessionmaker() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        return problem(503, "Not ready", f"database unreachable: {type(exc).__name__}")
    held = request.app.state.delivery.health.held_by
    return {
        "status": "ready",
        "deliveries": {
            "held": held is not None,
            "reason": None if held is None else held.kind.value,
            "detail": None if held is None else held.detail,
        },
    }


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus text: see `customer_service.metrics` for what each metric means."""
    state = request.app.state
    async with state.sessionmaker() as session:
        counts = await repository.count_by_status(session)
        oldest = await repository.oldest_created_at(session)
        awaiting, oldest_awaiting = await unconfirmed.count_and_oldest(session)
    now = utc_now()
    age = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
    registry: Metrics = state.metrics
    registry.set_outbox(counts, age)
    awaiting_age = 0.0 if oldest_awaiting is None else (now - oldest_awaiting).total_seconds()
    registry.set_unconfirmed(awaiting, max(0.0, awaiting_age))
    health = state.delivery.health
    registry.set_process(state.delivery.in_flight, health.suspect, health.held_by)
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
