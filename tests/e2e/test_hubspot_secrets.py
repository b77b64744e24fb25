"""The HubSpot token stays secret: a real `customer-service serve` process syncs with a
known token through a success, a 400, a 5xx, a 429 and a 401, and the token is found in
none of its log lines, its requests' `lastError`s, `/metrics`, `/ready` or the dashboard."""

from pathlib import Path
from typing import Any

import pytest
from crm_faces import (
    an_error_saying,
    create_secret_customer,
    first_error,
    operator_surfaces,
    through_a_refusal_and_an_outage,
)
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
            # HubSpot refuses: 400; a 503
            seen += await through_a_refusal_and_an_outage(http, control, errors)
            await control.faults(dailyLimit=1)
            limited = [await create_secret_customer(http, n) for n in (4, 5)]
            limit_error = await eventually(lambda: an_error_saying(http, limited, "429"), within=30)
            errors.append(limit_error)
            seen += await operator_surfaces(http)
            await control.faults(dailyLimit=None)
        await control.close()
        port = free_port()
        async with (
            service_process(database_url, other.url, port, HUBSPOT_BASE_URL=other.url, **env),
            loopback_client(f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            refused = await create_secret_customer(http, 6)
            errors.append(await eventually(lambda: first_error(http, refused), within=30))
            seen += await operator_surfaces(http)
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
