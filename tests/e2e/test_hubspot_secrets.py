"""The HubSpot token stays secret: a real `customer-service serve` process syncs with a
known token through a success, a 400, a 5xx, a 429 and a 401, and the token is found in
none of its log lines, its requests' `lastError`s, `/metrics`, `/ready` or the dashboard."""

from pathlib import Path
from typing import Any

import httpx
import pytest
from support import (
    CrmControl,
    LiveServer,
    eventually,
    free_port,
    live,
    loopback_client,
    service_process,
)

from crm_mock.app import create_app as create_crm_app
from crm_mock.config import CrmSettings

TOKEN = "pat-na1-5ecret-7f3c9e1a-0b2d-4c6e-8a9f-123456789abc"


def _mock(tmp_path: Path, name: str, token: str) -> LiveServer:
    settings = CrmSettings(
        _env_file=None,
        crm_database_url=f"sqlite+aiosqlite:///{tmp_path / name}",
        crm_api_token=token,
    )
    return LiveServer(lambda: create_crm_app(settings))


async def _surfaces(http: httpx.AsyncClient) -> list[str]:
    """Everything an operator reads: every request's lastError, /metrics, /ready, the
    dashboard."""
    rows = (await http.get("/api/failed-requests", params={"limit": 100})).json()["items"]
    return [
        *[str(row["lastError"]) for row in rows],
        (await http.get("/metrics")).text,
        (await http.get("/ready")).text,
        (await http.get("/dashboard")).text,
    ]


async def _create(http: httpx.AsyncClient, n: int, email: str | None = None) -> int:
    body = {"firstName": "S", "lastName": "Secret", "email": email or f"s{n}@example.com"}
    response = await http.post("/api/customers", json=body)
    assert response.status_code == 201, response.text
    customer_id: int = response.json()["id"]
    return customer_id


async def _status(http: httpx.AsyncClient, customer_id: int) -> str:
    status: str = (await http.get(f"/api/customers/{customer_id}")).json()["crm"]["status"]
    return status


async def _error_of(http: httpx.AsyncClient, customer_id: int) -> str | None:
    rows = (await http.get("/api/failed-requests", params={"customerId": customer_id})).json()
    errors = [row["lastError"] for row in rows["items"] if row["lastError"]]
    return errors[0] if errors else None


async def test_the_token_reaches_no_log_error_metric_or_page(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "service.log"
    monkeypatch.setenv("CRM_SYNC_TEST_SERVICE_LOG", str(log_path))
    seen: list[str] = []
    errors: list[str] = []
    async with (
        live(_mock(tmp_path, "right.db", TOKEN)) as right,
        live(_mock(tmp_path, "other.db", "pat-na1-someone-else")) as other,
    ):
        control = CrmControl(right.url)
        env: dict[str, Any] = {
            "CRM_CONNECTOR": "hubspot",
            "HUBSPOT_ACCESS_TOKEN": TOKEN,
            "LOG_FORMAT": "text",
        }
        port = free_port()
        async with (
            service_process(database_url, right.url, port, HUBSPOT_BASE_URL=right.url, **env),
            loopback_client(f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            ok = await _create(http, 1)
            await eventually(lambda: _synced(http, ok), within=30)
            bad = await _create(http, 2, email="bad@example.c")  # HubSpot refuses: 400
            errors.append(await eventually(lambda: _error_of(http, bad), within=30))
            await control.faults(down=True, statusCode=503)
            down = await _create(http, 3)
            errors.append(await eventually(lambda: _error_of(http, down), within=30))
            seen += await _surfaces(http)
            await control.faults(down=False)
            await eventually(lambda: _synced(http, down), within=30)
            await control.faults(dailyLimit=1)
            limited = [await _create(http, n) for n in (4, 5)]

            async def daily() -> str | None:
                found = [await _error_of(http, c) for c in limited]
                return next((e for e in found if e and "429" in e), None)

            errors.append(await eventually(daily, within=30))
            seen += await _surfaces(http)
            await control.faults(dailyLimit=None)
        await control.close()
        port = free_port()
        async with (
            service_process(database_url, other.url, port, HUBSPOT_BASE_URL=other.url, **env),
            loopback_client(f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            refused = await _create(http, 6)
            errors.append(await eventually(lambda: _error_of(http, refused), within=30))
            seen += await _surfaces(http)
    # The failures happened, and said why.
    assert any("400" in e for e in errors), errors
    assert any("503" in e for e in errors), errors
    assert any("429" in e and "DAILY" in e for e in errors), errors
    assert any("401" in e for e in errors), errors
    logged = log_path.read_text(errors="replace")
    assert "HubSpot" in logged  # the log was captured
    for text in [logged, *errors, *seen]:
        assert TOKEN not in text
        assert TOKEN[8:24] not in text  # not even a part of it


async def _synced(http: httpx.AsyncClient, customer_id: int) -> bool:
    return await _status(http, customer_id) == "synced"
