"""The reconciliation endpoints: run one now, read the latest report."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from customer_service.errors import NotFound
from customer_service.reconciliation.reconciler import Reconciler
from customer_service.reconciliation.schemas import ReconciliationReport

router = APIRouter(prefix="/api/reconciliation", tags=["reconciliation"])


def _reconciler(request: Request) -> Reconciler:
    reconciler: Reconciler = request.app.state.reconciler
    return reconciler


NO_REPORT: dict[int | str, dict[str, Any]] = {404: {"description": "No reconciliation ran yet"}}
CRM_UNREADABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "The CRM cannot be read (down, unreachable, or refusing)"}
}


@router.post("", response_model=ReconciliationReport, responses=CRM_UNREADABLE)
async def reconcile(
    request: Request,
    repair: Annotated[bool, Query(description="queue the fix of each finding")] = False,
) -> ReconciliationReport:
    """Compare every customer with the CRM's record now; with `repair=true`, queue the
    request that fixes each finding in `failed_requests`."""
    return await _reconciler(request).run(repair)


@router.get("/latest", response_model=ReconciliationReport, responses=NO_REPORT)
async def latest(request: Request) -> ReconciliationReport:
    """The report of the last reconciliation this process ran."""
    report = _reconciler(request).latest
    if report is None:
        raise NotFound("no reconciliation has run yet")
    return report
