"""What the end-to-end tests of the HubSpot and Salesforce connectors do alike against
the CRM mock's faces: run the customer service in process, write and read customers,
read what the service shows (statuses, failed requests, a hold), reconcile, and, for the
secrets tests, read every surface an operator reads.

What each CRM's face holds, and how it is asked, stays in its own test module.
"""

import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from support import CrmControl, eventually, operator_retry, read_customer

from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.db import create_engine, create_sessionmaker
from customer_service.reconciliation.reconciler import Reconciler
from customer_service.reconciliation.schemas import ReconciliationReport
from customer_service.sync.connector import build_connector

ADDRESS = {
    "street": "12 St James's Square",
    "city": "London",
    "state": None,
    "postalCode": "SW1Y 4JH",
    "country": "GB",
}

# -- the service in process ---------------------------------------------------------------


@asynccontextmanager
async def service(
    settings: Settings, run_scheduler: bool = False
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The customer service's app, started, and a client of it."""
    app = create_app(settings, run_scheduler=run_scheduler)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            yield app, client


async def create_nth(client: httpx.AsyncClient, n: int, **changes: Any) -> dict[str, Any]:
    """Customer `n` (Ada, `ada{n}@example.com`, at `ADDRESS`) created; the 201 body."""
    body = {
        "firstName": "Ada",
        "lastName": "v1",
        "email": f"ada{n}@example.com",
        "address": ADDRESS,
        **changes,
    }
    response = await client.post("/api/customers", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def put_changes(client: httpx.AsyncClient, customer: dict[str, Any], **changes: Any) -> None:
    body = {key: customer[key] for key in ("firstName", "lastName", "email", "phone", "address")}
    response = await client.put(f"/api/customers/{customer['id']}", json={**body, **changes})
    assert response.status_code == 200, response.text


async def backlog(settings: Settings, count: int, first: int = 0, **changes: Any) -> list[int]:
    """`count` customers written by an API-only process: their requests wait for a pass."""
    async with service(settings.model_copy(update={"sync_enabled": False})) as (_, client):
        return [(await create_nth(client, n, **changes))["id"] for n in range(first, first + count)]


# -- what the service shows ---------------------------------------------------------------


async def crm_statuses(client: httpx.AsyncClient, ids: list[int]) -> dict[int, str]:
    return {i: (await read_customer(client, i))["crm"]["status"] for i in ids}


async def requests_in(client: httpx.AsyncClient, status: str) -> list[dict[str, Any]]:
    """The failed requests in `status` (`failed`, `dead`)."""
    answer = await client.get("/api/failed-requests", params={"status": status, "limit": 100})
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def synced_at(client: httpx.AsyncClient, customer_id: int, version: int) -> bool:
    crm_state = (await read_customer(client, customer_id))["crm"]
    return bool(crm_state["status"] == "synced" and crm_state["syncedVersion"] == version)


async def held_deliveries(client: httpx.AsyncClient) -> dict[str, Any] | None:
    """`/ready`'s deliveries while they are held, else None."""
    deliveries: dict[str, Any] = (await client.get("/ready")).json()["deliveries"]
    return deliveries if deliveries["held"] else None


# -- reconciliation -----------------------------------------------------------------------


async def reconcile(settings: Settings, database_url: str) -> ReconciliationReport:
    """A reconciliation run without repair, two records a page (so the CRM's paging is
    followed), through the connector `settings` name."""
    engine = create_engine(database_url)
    connector = build_connector(settings, create_sessionmaker(engine))
    try:
        reconciler = Reconciler(create_sessionmaker(engine), connector.reader(), page_size=2)
        return await reconciler.run(repair=False)
    finally:
        await connector.close()
        await engine.dispose()


async def reconciled_clean(client: httpx.AsyncClient) -> bool:
    """No fix on its way, and a new run finds nothing missing, extra or different."""
    if (await client.get("/api/failed-requests")).json()["total"]:
        return False  # fixes still on their way
    again = (await client.post("/api/reconciliation")).json()
    return not (again["missing"] or again["extra"] or again["different"])


# -- a `customer-service serve` process (the secrets tests) -------------------------------


async def operator_surfaces(http: httpx.AsyncClient) -> list[str]:
    """Everything an operator reads: every request's lastError, /metrics, /ready, the
    dashboard."""
    rows = (await http.get("/api/failed-requests", params={"limit": 100})).json()["items"]
    return [
        *[str(row["lastError"]) for row in rows],
        (await http.get("/metrics")).text,
        (await http.get("/ready")).text,
        (await http.get("/dashboard")).text,
    ]


async def create_secret_customer(http: httpx.AsyncClient, n: int, email: str | None = None) -> int:
    body = {"firstName": "S", "lastName": "Secret", "email": email or f"s{n}@example.com"}
    response = await http.post("/api/customers", json=body)
    assert response.status_code == 201, response.text
    customer_id: int = response.json()["id"]
    return customer_id


async def crm_status(http: httpx.AsyncClient, customer_id: int) -> str:
    status: str = (await http.get(f"/api/customers/{customer_id}")).json()["crm"]["status"]
    return status


async def is_synced(http: httpx.AsyncClient, customer_id: int) -> bool:
    return await crm_status(http, customer_id) == "synced"


async def first_error(http: httpx.AsyncClient, customer_id: int) -> str | None:
    """The first `lastError` of a customer's failed requests, if any."""
    rows = (await http.get("/api/failed-requests", params={"customerId": customer_id})).json()
    errors = [row["lastError"] for row in rows["items"] if row["lastError"]]
    return errors[0] if errors else None


# -- `kill -9` mid batch (the crash tests) -----------------------------------------------


async def _writing(crm: CrmControl) -> bool:
    """Whether the CRM is answering a write now (a GET is the service's probe)."""
    return any(call["method"] != "GET" for call in await crm.calls())


async def kill_while_sending(
    http: httpx.AsyncClient, crm: CrmControl, process: "subprocess.Popen[bytes]", written: int
) -> None:
    """`kill -9` the service process once the CRM is answering its batch call (slowly:
    `latencyMs`), nothing recorded as delivered yet. A write (not a GET: the service's
    probe) in flight at the CRM, not the service's own count of deliveries, which counts
    them from the kick, before the call has left."""

    await eventually(lambda: _writing(crm))
    # Nothing recorded as delivered: the answer is two seconds away.
    assert (await http.get("/api/failed-requests")).json()["total"] == written
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


async def landed_after_kill(crm: CrmControl, at_least: int) -> None:
    """Wait until the calls the killed process left in flight have been answered (to
    nobody) and at least `at_least` records exist: records the service does not know of.
    How many it made depends on how the held customers were split into calls (a first
    delivery that failed before the breaker opened is retried by the recovery pass, the
    held ones by their kicks: one call or two), so only a lower bound is asked here; the
    restarted service must then find every one of them."""

    async def landed() -> bool:
        return not await _writing(crm) and len(await crm.records()) >= at_least

    await eventually(landed)


async def assert_one_record_each(
    http: httpx.AsyncClient, crm: CrmControl, written: list[dict[str, Any]]
) -> None:
    """Each written customer has one CRM record: the one it names, with its data."""
    for customer in written:
        current = (await http.get(f"/api/customers/{customer['id']}")).json()
        records = await crm.records(customer["id"])
        assert len(records) == 1, records
        assert current["crm"]["id"] == records[0]["id"]
        assert records[0]["firstName"] == customer["firstName"]


async def assert_each_made_once(crm: CrmControl, written: list[dict[str, Any]]) -> None:
    """Each written customer's record was made once (201), then found again (200); calls
    the CRM refused (it was down a while) made nothing."""
    for customer in written:
        statuses = [e["status"] for e in await crm.requests(customer["id"])]
        answered = [status for status in statuses if status < 300]
        assert answered[0] == 201 and 200 in answered[1:], statuses  # made once, found again


async def credentials_hold_then_sync(wrong: Settings, right: Settings, detail: str) -> None:
    """Three customers written while the CRM refuses our credentials: deliveries held as
    `credentials` (the hold's detail names `detail`), none dead however often an operator
    retries; with `right`, a retry syncs them."""
    async with service(wrong) as (_, client):
        ids = [(await create_nth(client, n))["id"] for n in range(3)]
        held = await eventually(lambda: held_deliveries(client))
        assert held["reason"] == "credentials"
        assert detail in held["detail"]
        await operator_retry(client)
        await operator_retry(client)
        assert set((await crm_statuses(client, ids)).values()) == {"failed"}
        assert not await requests_in(client, "dead")
        assert "credentials" in (await client.get("/dashboard")).text
    async with service(right) as (_, client):
        await operator_retry(client)
        assert set((await crm_statuses(client, ids)).values()) == {"synced"}


async def through_a_refusal_and_an_outage(
    http: httpx.AsyncClient, control: CrmControl, errors: list[str]
) -> list[str]:
    """One customer synced, one refused (a bad email: 400), one failed while the CRM is
    down (503) and synced once it is back; the two failures' `lastError`s appended to
    `errors`; what an operator read during the outage returned."""
    ok = await create_secret_customer(http, 1)
    await eventually(lambda: is_synced(http, ok), within=30)
    bad = await create_secret_customer(http, 2, email="bad@example.c")
    errors.append(await eventually(lambda: first_error(http, bad), within=30))
    await control.faults(down=True, statusCode=503)
    down = await create_secret_customer(http, 3)
    errors.append(await eventually(lambda: first_error(http, down), within=30))
    seen = await operator_surfaces(http)
    await control.faults(down=False)
    await eventually(lambda: is_synced(http, down), within=30)
    return seen


async def coalesced_run_and_a_lost_create(
    settings: Settings,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Written by an API-only process: customer 1 created and updated four times (a run of
    five to coalesce), and customer 2 created, then deleted with its create's request
    discarded (as if its answer had been lost: the CRM may hold its record, with no Id
    of it known to us)."""
    async with service(settings.model_copy(update={"sync_enabled": False})) as (_, client):
        customer = await create_nth(client, 1)
        for version in range(2, 6):
            await put_changes(client, customer, lastName=f"v{version}")
        other = await create_nth(client, 2)
        [row] = [r for r in await requests_in(client, "pending") if r["customerId"] == other["id"]]
        assert (await client.delete(f"/api/failed-requests/{row['id']}")).status_code == 204
        assert (await client.delete(f"/api/customers/{other['id']}")).status_code == 204
    return customer, other


async def an_error_saying(
    http: httpx.AsyncClient, customer_ids: list[int], mark: str
) -> str | None:
    """The first `lastError` of these customers that says `mark`, if any yet."""
    found = [await first_error(http, c) for c in customer_ids]
    return next((e for e in found if e and mark in e), None)
