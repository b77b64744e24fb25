"""A held delivery says why, within seconds: the service (its retry job and probe running)
against a scripted CRM that answers as a broken one does: an HTML 502 from a load
balancer, our credentials refused, a 201 that names no record."""

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from asgi_lifespan import LifespanManager
from support import eventually

from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.sync.hold import HoldKind, HoldReason

ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}
HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FrontOfCrm:
    """What answers at CRM_BASE_URL; `answer` is switched by the test."""

    def __init__(self) -> None:
        self.answer: Handler = healthy
        self.calls: list[tuple[str, str]] = []
        self.server = TestServer(web.Application(), host="127.0.0.1")
        self.server.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        return await self.answer(request)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


async def healthy(request: web.Request) -> web.StreamResponse:
    if request.method == "GET":
        return web.json_response({"items": [], "total": 0})
    if request.method == "POST":
        body = await request.json()
        return web.json_response({"id": f"crm-{body['externalId']}", **body}, status=201)
    return web.json_response({}, status=200)


async def bad_gateway(request: web.Request) -> web.StreamResponse:
    return web.Response(status=502, text=HTML_502, content_type="text/html")


async def credentials_refused(request: web.Request) -> web.StreamResponse:
    return web.json_response({"detail": "invalid token"}, status=401)


@pytest.fixture
async def front() -> AsyncIterator[FrontOfCrm]:
    crm = FrontOfCrm()
    await crm.server.start_server()
    try:
        yield crm
    finally:
        await crm.server.close()


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The service with its retry job and probe, and an ASGI client of it."""
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            yield http


def settings_for(make_settings: Callable[..., Settings], front: FrontOfCrm) -> Settings:
    return make_settings(crm_base_url=front.url, recovery_probe_seconds=0.1)


async def only_request(http: httpx.AsyncClient, customer_id: int) -> dict[str, Any]:
    response = await http.get("/api/failed-requests", params={"customerId": customer_id})
    [row] = response.json()["items"]
    assert isinstance(row, dict)
    return row


async def test_an_html_502_holds_deliveries_and_says_so_everywhere_within_seconds(
    make_settings: Callable[..., Settings],
    front: FrontOfCrm,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="customer_service")
    front.answer = bad_gateway
    expected = "CRM answered 502 with a body that is not JSON (text/html)"
    async with running(settings_for(make_settings, front)) as http:
        customer = (await http.post("/api/customers", json=ADA)).json()

        async def explained() -> dict[str, Any] | None:
            row = await only_request(http, customer["id"])
            return row if row["lastError"] and expected in row["lastError"] else None

        # Held untried ("deliveries held: ..."), or tried by the start-up pass.
        row = await eventually(explained, within=5)
        assert row["status"] in ("pending", "failed")
        ready = await http.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["deliveries"] == {
            "held": True,
            "reason": "crm_error",
            "detail": expected,
        }
        metrics = (await http.get("/metrics")).text
        assert 'crm_sync_deliveries_held{reason="crm_error"} 1.0' in metrics
        assert 'crm_sync_deliveries_held{reason="certificate"} 0.0' in metrics
        page = (await http.get("/dashboard")).text
        assert "crm-held-reason" in page and expected in page

        # Probes go on, but the reason is logged once, not once per call.
        probes = len(front.calls)

        async def probed_again() -> bool:
            return len(front.calls) >= probes + 5

        await eventually(probed_again, within=5)
        held_lines = [r for r in caplog.records if "CRM deliveries held" in r.getMessage()]
        assert len(held_lines) == 1 and expected in held_lines[0].getMessage()

        front.answer = healthy

        async def synced() -> bool:
            got = (await http.get(f"/api/customers/{customer['id']}")).json()
            return bool(got["crm"]["status"] == "synced")

        await eventually(synced, within=5)
        assert (await http.get("/ready")).json()["deliveries"]["held"] is False
        metrics = (await http.get("/metrics")).text
        assert 'crm_sync_deliveries_held{reason="crm_error"} 0.0' in metrics
    assert any("CRM deliveries resume" in r.getMessage() for r in caplog.records)


async def test_held_requests_carry_the_reason_and_follow_its_changes(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(), run_scheduler=False)
    async with LifespanManager(app):
        health = app.state.delivery.health
        health.probing = True  # the breaker opens as with the probe running
        health.mark_failing(HoldReason(HoldKind.CERTIFICATE, "certificate verify failed"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            ids = [
                (
                    await http.post("/api/customers", json=ADA | {"email": f"{i}@example.com"})
                ).json()["id"]
                for i in range(3)
            ]

            async def all_say(text: str) -> bool:
                rows = [await only_request(http, i) for i in ids]
                return all(
                    (r["status"], r["attempts"], r["lastError"]) == ("pending", 0, text)
                    for r in rows
                )

            await eventually(lambda: all_say("deliveries held: certificate verify failed"))
            health.mark_failing(HoldReason(HoldKind.UNREACHABLE, "connection refused"))
            await eventually(lambda: all_say("deliveries held: connection refused"))
            health.mark_healthy()  # the held kicks go out

            async def delivered() -> bool:
                listed = await http.get("/api/failed-requests")
                return bool(listed.json()["total"] == 0)

            await eventually(delivered)


async def test_refused_credentials_hold_deliveries_and_kill_no_request(
    make_settings: Callable[..., Settings], front: FrontOfCrm
) -> None:
    front.answer = credentials_refused
    async with running(settings_for(make_settings, front)) as http:
        customer = (await http.post("/api/customers", json=ADA)).json()

        async def reason() -> str | None:
            held = (await http.get("/ready")).json()["deliveries"]
            return held["reason"] if held["held"] else None

        assert await eventually(reason, within=5) == "credentials"
        # An operator's pass tries it anyway: a failure, not a dead request.
        report = (await http.post("/api/failed-requests/retry")).json()
        assert report["attempted"] == 1 and report["dead"] == 0
        row = await only_request(http, customer["id"])
        assert row["status"] == "failed"
        assert row["lastError"] == "CRM answered 401: invalid token"
        dead = (await http.get("/api/failed-requests", params={"status": "dead"})).json()
        assert dead["total"] == 0


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (web.json_response({"externalId": "1"}, status=201), "without a record id"),
        (
            web.Response(status=201, text="<p>Created</p>", content_type="text/html"),
            "with a body that is not JSON (text/html)",
        ),
    ],
)
async def test_a_create_answered_201_without_a_record_is_a_failure_that_says_so(
    make_settings: Callable[..., Settings],
    front: FrontOfCrm,
    created: web.Response,
    expected: str,
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.Response(
                status=created.status, body=created.body, content_type=created.content_type
            )
        return await healthy(request)

    front.answer = answer
    async with running(settings_for(make_settings, front)) as http:
        customer = (await http.post("/api/customers", json=ADA)).json()

        async def failed() -> dict[str, Any] | None:
            row = await only_request(http, customer["id"])
            return row if row["status"] == "failed" else None

        row = await eventually(failed, within=5)
        assert row["lastError"] == f"CRM answered 201 {expected}"
        got = (await http.get(f"/api/customers/{customer['id']}")).json()
        assert got["crm"]["status"] == "failed" and got["crm"]["id"] is None
