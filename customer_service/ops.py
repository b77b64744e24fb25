"""Liveness, readiness and Prometheus metrics."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from customer_service.errors import problem
from customer_service.sync import repository
from customer_service.sync.models import RequestStatus

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", response_model=None)
async def ready(request: Request) -> dict[str, str] | JSONResponse:
    try:
        async with request.app.state.sessionmaker() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        return problem(503, "Not ready", f"database unreachable: {type(exc).__name__}")
    return {"status": "ready"}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> str:
    state = request.app.state
    async with state.sessionmaker() as session:
        counts = await repository.count_by_status(session)
    lines = [
        "# HELP crm_sync_failed_requests Undelivered CRM requests by status.",
        "# TYPE crm_sync_failed_requests gauge",
        *(
            f'crm_sync_failed_requests{{status="{s.value}"}} {counts.get(s.value, 0)}'
            for s in RequestStatus
        ),
        "# HELP crm_sync_deliveries_in_flight Customers being delivered right after a write.",
        "# TYPE crm_sync_deliveries_in_flight gauge",
        f"crm_sync_deliveries_in_flight {state.dispatcher.in_flight}",
        "# HELP crm_sync_crm_suspect 1 while this replica sees the CRM failing.",
        "# TYPE crm_sync_crm_suspect gauge",
        f"crm_sync_crm_suspect {int(state.deliverer.health.suspect)}",
    ]
    return "\n".join(lines) + "\n"
