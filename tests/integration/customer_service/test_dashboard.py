"""The dashboard over plain HTTP: the key, the counts, the requests, the actions."""

import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from asgi_lifespan import LifespanManager
from support import CrmControl, eventually

from customer_service.app import create_app
from customer_service.config import Settings

KEY = "s3cret-key"


@pytest.fixture
async def keyed(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(api_key=KEY), run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            yield http


async def test_the_dashboard_asks_for_the_api_key_and_remembers_it(
    keyed: httpx.AsyncClient,
) -> None:
    asked = await keyed.get("/dashboard")
    assert asked.status_code == 401
    assert 'name="key"' in asked.text
    wrong = await keyed.post("/dashboard/login", data={"key": "nope"})
    assert wrong.status_code == 401 and "not the API_KEY" in wrong.text
    assert (await keyed.post("/dashboard/requests/1/replay")).status_code == 401
    login = await keyed.get("/dashboard", params={"key": KEY})
    assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
    page = await keyed.get("/dashboard")  # the client keeps the cookie
    assert page.status_code == 200
    assert "No undelivered requests" in page.text
    by_header = await httpx.AsyncClient(transport=keyed._transport, base_url="http://service").get(
        "/dashboard", headers={"X-API-Key": KEY}
    )
    assert by_header.status_code == 200


async def test_the_dashboard_shows_dead_requests_and_replays_and_discards_them(
    client: httpx.AsyncClient, crm_control: CrmControl
) -> None:
    await crm_control.faults(down=True, statusCode=400, retryAfterSeconds=None)
    for email in ("a@example.com", "b@example.com"):
        body = {"firstName": "Dead", "lastName": "Letter", "email": email}
        assert (await client.post("/api/customers", json=body)).status_code == 201

    async def two_dead() -> bool:
        page = (await client.get("/api/failed-requests", params={"status": "dead"})).json()
        return bool(page["total"] == 2)

    await eventually(two_dead)
    page = await client.get("/dashboard", params={"status": "dead"})
    assert page.status_code == 200
    assert re.search(r'id="count-dead">2<', page.text)
    assert page.text.count('data-status="dead"') == 2
    assert "CRM answered 400" in page.text
    assert re.search(r'id="crm-health">up<', page.text)  # a 4xx is no outage

    filtered = await client.get("/dashboard", params={"customerId": "2"})
    assert filtered.text.count('data-status="dead"') == 1 and 'id="request-2"' in filtered.text

    await crm_control.faults(down=False)
    replayed = await client.post("/dashboard/requests/1/replay", data={"status": "dead"})
    assert replayed.status_code == 303
    assert replayed.headers["location"].startswith("/dashboard?status=dead&notice=")
    discarded = await client.post("/dashboard/requests/2/discard")
    assert discarded.status_code == 303

    async def delivered() -> bool:
        return len(await crm_control.records(1)) == 1

    await eventually(delivered)

    async def none_left() -> bool:
        # The CRM has it a moment before the delivery's settle commits.
        return 'id="no-requests"' in (await client.get("/dashboard")).text

    await eventually(none_left)
    assert (await crm_control.records(2)) == []

    reconciled = await client.post("/dashboard/reconcile", data={"repair": "true"})
    assert reconciled.status_code == 303
    assert (
        "1 differences, 1 fixes queued" in (await client.get(reconciled.headers["location"])).text
    )
