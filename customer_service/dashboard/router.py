"""The dashboard's routes: the page, its actions (forms that redirect back), its login.

With `API_KEY` set, the page wants the key like the API does: in `X-API-Key`, or in the
cookie its login form (or `/dashboard?key=...`) sets. The actions are plain HTML forms
posting back here, so the page works without JavaScript; the script only refreshes it.
"""

import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from customer_service.columns import utc_now
from customer_service.config import SyncMode
from customer_service.deps import RequestId, SessionDep
from customer_service.metrics import Metrics
from customer_service.reconciliation.reconciler import CrmReadFailed, Reconciler
from customer_service.schemas import INT32_MAX
from customer_service.sync import repository, unconfirmed
from customer_service.sync.models import RequestStatus
from customer_service.sync.outbox import kick_after_commit

HERE = Path(__file__).parent
STATIC = HERE / "static"
COOKIE = "crm_sync_api_key"
PAGE_SIZE = 100

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/dashboard", tags=["dashboard"])

HTML_PAGE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The operator's page",
        "content": {"text/html": {"example": "<!doctype html><title>crm-sync</title>..."}},
    },
    303: {"description": "`key` given: kept in a cookie, and back to /dashboard without it"},
    401: {
        "description": "API_KEY is set: the page asks for the key",
        "content": {"text/html": {"example": "<!doctype html><title>crm-sync: key</title>..."}},
    },
}


def _key_ok(request: Request) -> bool:
    expected: str = request.app.state.settings.api_key
    if not expected:
        return True
    given = request.headers.get("x-api-key") or unquote(request.cookies.get(COOKIE, ""))
    return secrets.compare_digest(given.encode(), expected.encode())


def _login(request: Request, error: str | None = None) -> HTMLResponse:
    context = {"error": error, "action": request.url.path.rstrip("/") + "/login"}
    return templates.TemplateResponse(request, "login.html", context, status_code=401)


def _status_filter(value: str | None) -> RequestStatus | None:
    return RequestStatus(value) if value in {s.value for s in RequestStatus} else None


def _customer_filter(value: str | None) -> int | None:
    if value and value.isascii() and value.isdigit() and 1 <= int(value) <= INT32_MAX:
        return int(value)
    return None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _back(status: str | None, customer_id: str | None, notice: str) -> RedirectResponse:
    query = {k: v for k, v in (("status", status), ("customerId", customer_id)) if v}
    query["notice"] = notice
    return RedirectResponse(f"/dashboard?{urlencode(query)}", status_code=303)


@router.get("", response_class=HTMLResponse, responses=HTML_PAGE)
async def page(
    request: Request,
    session: SessionDep,
    status: Annotated[str | None, Query(description="pending, failed or dead")] = None,
    customer_id: Annotated[str | None, Query(alias="customerId")] = None,
    key: Annotated[str | None, Query(description="sets the API key cookie")] = None,
    notice: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The page: counts, health, the last reconciliation and the undelivered requests."""
    if key is not None:
        return await _remember_key(request, key)
    if not _key_ok(request):
        return _login(request)
    state = request.app.state
    wanted, customer = _status_filter(status), _customer_filter(customer_id)
    counts = await repository.count_by_status(session)
    oldest = await repository.oldest_created_at(session)
    # Kafka mode: published, not yet confirmed by the CRM; not undelivered requests.
    awaiting, oldest_awaiting = await unconfirmed.count_and_oldest(session)
    rows, total = await repository.page(session, wanted, customer, PAGE_SIZE, 0)
    metrics: Metrics = state.metrics
    reconciler: Reconciler = state.reconciler
    lag = metrics.lag_summary()
    context = {
        "counts": {s.value: counts.get(s.value, 0) for s in RequestStatus},
        "undelivered": sum(counts.values()),
        "oldest_age": _age((utc_now() - oldest).total_seconds() if oldest else None),
        "kafka": state.settings.sync_mode == SyncMode.KAFKA,
        "awaiting": awaiting,
        "awaiting_age": _age(
            (utc_now() - oldest_awaiting).total_seconds() if oldest_awaiting else None
        ),
        "lag_last": _age(lag.last),
        "lag_mean": _age(lag.mean),
        "lag_count": lag.count,
        "crm_failing": metrics.crm_failing,
        "crm_contacted": metrics.crm_answering is not None,
        # Why this replica holds its deliveries (`sync.hold`), next to "CRM down".
        "held": state.delivery.health.held_by,
        "in_flight": state.delivery.in_flight,
        "report": reconciler.latest,
        "rows": rows,
        "total": total,
        "page_size": PAGE_SIZE,
        "status": wanted.value if wanted else "",
        "customer_id": customer or "",
        "statuses": [s.value for s in RequestStatus],
        "notice": notice,
        "now": utc_now(),
    }
    return templates.TemplateResponse(request, "dashboard.html", context)


async def _remember_key(request: Request, key: str) -> Response:
    expected: str = request.app.state.settings.api_key
    if expected and not secrets.compare_digest(key.encode(), expected.encode()):
        return _login(request, "That key is not the API_KEY.")
    response = RedirectResponse("/dashboard", status_code=303)
    if expected:
        # Quoted: a cookie carries only plain ASCII.
        response.set_cookie(COOKIE, quote(key, safe=""), httponly=True, samesite="strict")
    return response


@router.post("/login", include_in_schema=False)
async def login(request: Request, key: Annotated[str, Form()] = "") -> Response:
    return await _remember_key(request, key)


@router.post("/requests/{request_id}/replay", include_in_schema=False)
async def replay(
    request: Request,
    request_id: RequestId,
    session: SessionDep,
    status: Annotated[str | None, Form()] = None,
    customer_id: Annotated[str | None, Form(alias="customerId")] = None,
) -> Response:
    if not _key_ok(request):
        return _login(request)
    row = await repository.replay(session, request_id, utc_now())
    if row is None:
        return _back(status, customer_id, f"Request {request_id} is gone already.")
    kick_after_commit(session, row.customer_id)
    return _back(status, customer_id, f"Request {request_id} replayed.")


@router.post("/requests/{request_id}/discard", include_in_schema=False)
async def discard(
    request: Request,
    request_id: RequestId,
    session: SessionDep,
    status: Annotated[str | None, Form()] = None,
    customer_id: Annotated[str | None, Form(alias="customerId")] = None,
) -> Response:
    if not _key_ok(request):
        return _login(request)
    row = await repository.discard(session, request_id)
    if row is None:
        return _back(status, customer_id, f"Request {request_id} is gone already.")
    kick_after_commit(session, row.customer_id)
    return _back(status, customer_id, f"Request {request_id} discarded.")


@router.post("/reconcile", include_in_schema=False)
async def reconcile(request: Request, repair: Annotated[bool, Form()] = False) -> Response:
    if not _key_ok(request):
        return _login(request)
    reconciler: Reconciler = request.app.state.reconciler
    try:
        report = await reconciler.run(repair)
    except CrmReadFailed as exc:
        return _back(None, None, f"Reconciliation failed: {exc.detail}")
    found = len(report.missing) + len(report.extra) + len(report.different)
    done = f", {report.queued} fixes queued" if repair else ""
    return _back(None, None, f"Reconciliation: {found} differences{done}.")


@router.get("/static/dashboard.js", include_in_schema=False)
async def script() -> Response:
    return Response((STATIC / "dashboard.js").read_bytes(), media_type="text/javascript")
