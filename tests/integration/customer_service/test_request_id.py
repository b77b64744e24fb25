"""X-Request-ID: taken or made, returned, and named by the log lines of the work it causes."""

import logging

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import CrmControl, eventually

from customer_service.config import Settings
from customer_service.crm.client import CrmClient
from customer_service.db import create_engine, create_sessionmaker
from customer_service.reconciliation.reconciler import Reconciler
from customer_service.request_id import RequestIdFilter, current_request_id

ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}


async def test_a_request_id_is_returned_as_sent_or_made(client: httpx.AsyncClient) -> None:
    sent = await client.get("/api/customers", headers={"X-Request-ID": "trace-1"})
    assert sent.headers["X-Request-ID"] == "trace-1"
    made = await client.get("/api/customers/999")
    assert made.status_code == 404
    assert len(made.headers["X-Request-ID"]) == 32
    other = await client.get("/api/customers/999")
    assert other.headers["X-Request-ID"] != made.headers["X-Request-ID"]


async def test_the_delivery_a_write_causes_logs_under_its_request_id(
    client: httpx.AsyncClient, crm_control: CrmControl, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO, logger="customer_service")
    await crm_control.faults(down=True, statusCode=503)
    created = await client.post("/api/customers", json=ADA, headers={"X-Request-ID": "write-9"})
    assert created.status_code == 201

    async def failure_logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "failed (attempt" in r.getMessage()]

    [record] = await eventually(failure_logged)
    assert getattr(record, "request_id", None) == "write-9"
    requests = await crm_control.requests()
    assert requests and requests[-1]["method"] == "POST"


async def test_a_reconciliation_outside_a_request_calls_the_crm_under_an_id_of_its_own(
    database_url: str,
) -> None:
    seen: list[str | None] = []

    async def page(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("X-Request-ID"))
        return web.json_response({"items": [], "total": 0})

    app = web.Application()
    app.router.add_get("/api/crm/customers", page)
    crm = TestServer(app, host="127.0.0.1")
    await crm.start_server()
    engine = create_engine(database_url)
    client = CrmClient(Settings(crm_base_url=str(crm.make_url("")).rstrip("/")))
    try:
        reconciler = Reconciler(create_sessionmaker(engine), client)
        assert (await reconciler.run()).drift == 0
    finally:
        await client.aclose()
        await engine.dispose()
        await crm.close()
    assert seen and all(sent is not None and sent.startswith("reconcile-") for sent in seen)
    assert current_request_id.get() is None
