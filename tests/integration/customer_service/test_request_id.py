"""X-Request-ID: taken or made, returned, and named by the log lines of the work it causes."""

import logging

import httpx
import pytest
import respx
from support import CrmControl, eventually, loopback_client

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


@respx.mock
async def test_a_reconciliation_outside_a_request_calls_the_crm_under_an_id_of_its_own(
    database_url: str,
) -> None:
    crm = "http://crm.test"
    route = respx.get(f"{crm}/api/crm/customers").mock(
        return_value=httpx.Response(200, json={"items": [], "total": 0})
    )
    engine = create_engine(database_url)
    try:
        async with loopback_client(crm) as http:
            reconciler = Reconciler(create_sessionmaker(engine), CrmClient(http))
            assert (await reconciler.run()).drift == 0
    finally:
        await engine.dispose()
    sent = route.calls.last.request.headers["X-Request-ID"]
    assert sent.startswith("reconcile-")
    assert current_request_id.get() is None
