"""The Salesforce client secret and access tokens stay secret: a real `customer-service
serve` process syncs through a success, a record refused (400), a 503, an expired token,
REQUEST_LIMIT_EXCEEDED and a refused token, and neither the secret nor any token the
mock issued is found in its log lines, its requests' `lastError`s, `/metrics`, `/ready`
or the dashboard."""

from pathlib import Path
from typing import Any

import pytest
from crm_faces import (
    an_error_saying,
    create_secret_customer,
    first_error,
    is_synced,
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
from crm_mock.salesforce import state_of

SECRET = "sf-5ecret-9d2e4b7a-31c8-4f0e-a6b5-0123456789ab"


def _mock(tmp_path: Path, name: str, secret: str) -> tuple[LiveServer, Any]:
    settings = CrmSettings(
        _env_file=None,
        crm_database_url=f"sqlite+aiosqlite:///{tmp_path / name}",
        crm_api_token=secret,
    )
    app = create_crm_app(settings)
    return LiveServer(lambda: app), app


def _env(login_url: str) -> dict[str, Any]:
    return {
        "CRM_CONNECTOR": "salesforce",
        "SALESFORCE_LOGIN_URL": login_url,
        "SALESFORCE_CLIENT_ID": "crm-sync-secrets",
        "SALESFORCE_CLIENT_SECRET": SECRET,
        "LOG_FORMAT": "text",
    }


async def test_the_secret_and_tokens_reach_no_log_error_metric_or_page(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "service.log"
    monkeypatch.setenv("CRM_SYNC_TEST_SERVICE_LOG", str(log_path))
    seen: list[str] = []
    errors: list[str] = []
    right, right_app = _mock(tmp_path, "right.db", SECRET)
    other, _ = _mock(tmp_path, "other.db", "someone-else's-secret")
    async with live(right), live(other):
        control = CrmControl(right.url)
        port = free_port()
        async with (
            service_process(database_url, right.url, port, **_env(right.url)),
            loopback_client(f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            # a record refused: 400; a 503
            seen += await through_a_refusal_and_an_outage(http, control, errors)
            async with loopback_client(right.url) as mock_http:
                await mock_http.post("/api/crm/_salesforce/expire-tokens")
            renewed = await create_secret_customer(http, 4)  # a 401, a new token, sent again
            await eventually(lambda: is_synced(http, renewed), within=30)
            await control.faults(dailyLimit=1)
            limited = [await create_secret_customer(http, n) for n in (5, 6)]
            limit_error = await eventually(
                lambda: an_error_saying(http, limited, "REQUEST_LIMIT_EXCEEDED"), within=30
            )
            errors.append(limit_error)
            seen += await operator_surfaces(http)
            await control.faults(dailyLimit=None)
        await control.close()
        port = free_port()
        async with (
            service_process(database_url, other.url, port, **_env(other.url)),
            loopback_client(f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            refused = await create_secret_customer(http, 7)
            errors.append(await eventually(lambda: first_error(http, refused), within=30))
            seen += await operator_surfaces(http)
    state = state_of(right_app)
    tokens = [*state.tokens, *state.expired]
    assert len(tokens) == 2  # the first, expired; the one fetched after
    # The failures happened, and said why.
    assert any("(INVALID_EMAIL_ADDRESS)" in e for e in errors), errors
    assert any("503" in e for e in errors), errors
    assert any("403 REQUEST_LIMIT_EXCEEDED" in e for e in errors), errors
    assert any("invalid_client" in e for e in errors), errors
    logged = log_path.read_text(errors="replace")
    assert "Salesforce" in logged  # the log was captured
    for text in [logged, *errors, *seen]:
        assert SECRET not in text
        assert SECRET[3:19] not in text  # not even a part of it
        for token in tokens:
            assert token not in text
            assert token.split("!")[1][:16] not in text
