"""A real CRM over HTTPS: a private CA, a certificate it does not trust, a proxy.

The CRM mock runs as a real uvicorn process serving TLS with a certificate for
127.0.0.1 issued by a private CA (made with trustme); `customer-service serve` runs as a
real process against it, on SQLite. The tests prove, from the outside:

- the CA can be trusted either through OpenSSL's own `SSL_CERT_FILE` or through
  `CRM_CA_BUNDLE` (besides the system's roots), and then a create, an update and a
  delete reach the CRM;
- without that trust nothing is delivered, and why is shown within seconds on every
  surface an operator looks at: the request's `lastError`, `/ready`'s `deliveries`,
  the dashboard's `crm-held-reason`, and the `crm_sync_deliveries_held` gauge;
- `HTTPS_PROXY` (a plain-HTTP CONNECT proxy) is honoured, also for a loopback CRM when
  `NO_PROXY` does not name it.

The service's environment is built here: the outer environment's proxy and CA settings
(either case) never leak into it.
"""

import asyncio
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from connect_proxy import connect_proxy
from support import (
    CrmControl,
    assert_equal_sides,
    create_customer,
    eventually,
    free_port,
    loopback_client,
    read_customer,
    service_process,
    update_customer,
)

from customer_service.migrate import migrate

# The held reason must show on every surface within this (the probe runs every 0.3 s).
HELD_WITHIN = 5.0
PROBE_SECONDS = "0.3"
VERIFY_FAILED = "certificate verify failed"
NOT_HELD = {"status": "ready", "deliveries": {"held": False, "reason": None, "detail": None}}

# Settings of the outer environment that would change whom the service trusts or how it
# connects; each test says itself which of them the service gets.
OUTER_SETTINGS = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CRM_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`service_process` starts from `os.environ`: none of the outer CA or proxy
    settings reach the service unless a test passes them (restored afterwards)."""
    for name in OUTER_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@dataclass
class TlsCrm:
    url: str
    port: int
    ca_file: Path
    control: CrmControl


class _TlsCrmControl(CrmControl):
    """`CrmControl` over HTTPS, trusting the private CA only, and no proxy."""

    def __init__(self, base_url: str, context: ssl.SSLContext) -> None:
        self.base_url = base_url
        self.http = loopback_client(base_url, timeout=30, verify=context, trust_env=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _start_tls_crm(ca: trustme.CA, folder: Path) -> tuple["subprocess.Popen[bytes]", int, Path]:
    """`uvicorn` serving the CRM mock over TLS on a free loopback port, with a certificate
    for 127.0.0.1 and localhost issued by `ca`; its own SQLite store and log in `folder`."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    key_file = folder / "crm-key.pem"
    cert_file = folder / "crm-cert.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    port = free_port()
    log_path = folder / "crm-mock.log"
    # The mock's own settings only: the CA and proxy settings were taken out already.
    env = {
        **os.environ,
        "CRM_DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'crm.db'}",
        "CRM_API_TOKEN": "",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "crm_mock.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--ssl-keyfile",
                str(key_file),
                "--ssl-certfile",
                str(cert_file),
                "--log-level",
                "warning",
            ],
            cwd=folder,  # no .env of the project's is read
            env=env,
            stdout=log,
            stderr=log,
        )
    return process, port, log_path


@pytest.fixture
async def tls_crm(
    ca: trustme.CA, ca_file: Path, client_context: ssl.SSLContext, tmp_path: Path
) -> AsyncIterator[TlsCrm]:
    """The CRM mock as a real process serving HTTPS on a loopback port, its certificate
    issued by the private CA; stopped on the way out."""
    process, port, log_path = _start_tls_crm(ca, tmp_path)
    url = f"https://127.0.0.1:{port}"
    control = _TlsCrmControl(url, client_context)
    try:

        async def up() -> bool:
            assert process.poll() is None, (
                f"the CRM mock exited at start-up: {log_path.read_text()[-2000:]}"
            )
            try:
                return (await control.http.get("/health")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(up, within=30)
        yield TlsCrm(url=url, port=port, ca_file=ca_file, control=control)
    finally:
        await control.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'customer_service.db'}"
    await migrate(url)
    return url


async def _synced_and_equal(http: httpx.AsyncClient, crm: CrmControl, customer_id: int) -> bool:
    customer = await read_customer(http, customer_id)
    assert customer["crm"]["status"] == "synced", customer["crm"]
    await assert_equal_sides(http, crm, customer_id)
    return True


async def _gone_from_the_crm(http: httpx.AsyncClient, crm: CrmControl, customer_id: int) -> bool:
    assert await crm.records(customer_id) == []
    page = (await http.get("/api/failed-requests", params={"customerId": customer_id})).json()
    assert page["total"] == 0, page
    return True


async def _ready_body(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/ready")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("trust", ["SSL_CERT_FILE", "CRM_CA_BUNDLE"])
async def test_crm_over_tls_with_a_private_ca_gets_create_update_delete(
    trust: str, tls_crm: TlsCrm, sqlite_url: str
) -> None:
    crm = tls_crm.control
    port = free_port()
    env = {"RECOVERY_PROBE_SECONDS": PROBE_SECONDS, trust: str(tls_crm.ca_file)}
    async with (
        service_process(sqlite_url, tls_crm.url, port, **env),
        loopback_client(f"http://127.0.0.1:{port}", trust_env=False) as http,
    ):
        customer = await create_customer(http)
        await eventually(lambda: _synced_and_equal(http, crm, customer["id"]))

        await update_customer(http, customer, lastName="King")
        await eventually(lambda: _synced_and_equal(http, crm, customer["id"]))
        assert (await crm.records(customer["id"]))[0]["lastName"] == "King"

        assert (await http.delete(f"/api/customers/{customer['id']}")).status_code == 204
        await eventually(lambda: _gone_from_the_crm(http, crm, customer["id"]))

        # The CRM's log also holds this test's own reads (GET): the service's writes are
        # the others, one of each.
        calls = [c for c in await crm.requests(customer["id"]) if c["method"] != "GET"]
        assert [c["method"] for c in calls] == ["POST", "PUT", "DELETE"], calls
        assert all(200 <= c["status"] < 300 for c in calls), calls
        # Nothing held: /ready says so in its own words.
        assert await _ready_body(http) == NOT_HELD


class _ElementText(HTMLParser):
    """The text inside the element with a given id (nested tags included)."""

    def __init__(self, element_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self._id = element_id
        self._depth = 0
        self.found = False
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._depth:
            self._depth += 1
        elif dict(attrs).get("id") == self._id:
            self.found = True
            self._depth = 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self._depth and dict(attrs).get("id") == self._id:
            self.found = True  # an empty element

    def handle_endtag(self, tag: str) -> None:
        if self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return " ".join("".join(self.parts).split())


def _held_reason_on_page(html: str) -> str | None:
    parser = _ElementText("crm-held-reason")
    parser.feed(html)
    parser.close()
    return parser.text if parser.found else None


async def test_untrusted_certificate_holds_deliveries_and_says_why_everywhere(
    tls_crm: TlsCrm, sqlite_url: str
) -> None:
    """No CA trust given: the service's roots do not include the private CA."""
    crm = tls_crm.control
    port = free_port()
    async with (
        service_process(sqlite_url, tls_crm.url, port, RECOVERY_PROBE_SECONDS=PROBE_SECONDS),
        loopback_client(f"http://127.0.0.1:{port}", trust_env=False) as http,
    ):
        customer = await create_customer(http)

        async def ready_says_held() -> dict[str, Any]:
            body = await _ready_body(http)
            assert body.get("status") == "ready", body
            held = body.get("deliveries") or {}
            assert held.get("held") is True, body
            assert held.get("reason") == "certificate", body
            assert VERIFY_FAILED in str(held.get("detail")).casefold(), body
            return body

        ready = await eventually(ready_says_held, within=HELD_WITHIN)
        assert set(ready) == {"status", "deliveries"}, ready
        assert set(ready["deliveries"]) == {"held", "reason", "detail"}, ready
        detail: str = ready["deliveries"]["detail"]

        async def request_says_why() -> dict[str, Any]:
            page = (
                await http.get("/api/failed-requests", params={"customerId": customer["id"]})
            ).json()
            assert len(page["items"]) == 1, page
            row: dict[str, Any] = page["items"][0]
            assert row["operation"] == "CREATE", row
            assert row["status"] != "dead", row
            assert detail in (row["lastError"] or ""), (detail, row)
            assert VERIFY_FAILED in row["lastError"].casefold(), row
            return row

        await eventually(request_says_why, within=HELD_WITHIN)

        async def dashboard_says_why() -> str:
            response = await http.get("/dashboard")
            assert response.status_code == 200, response.status_code
            shown = _held_reason_on_page(response.text)
            assert shown is not None, "no element with id crm-held-reason on /dashboard"
            assert VERIFY_FAILED in shown.casefold(), shown
            return shown

        await eventually(dashboard_says_why, within=HELD_WITHIN)

        async def gauge_says_held() -> bool:
            metrics = (await http.get("/metrics")).text
            held = [
                line for line in metrics.splitlines() if line.startswith("crm_sync_deliveries_held")
            ]
            assert 'crm_sync_deliveries_held{reason="certificate"} 1.0' in held, held
            return True

        await eventually(gauge_says_held, within=HELD_WITHIN)

        # Still nothing reached the CRM, nor is the customer said to be synced.
        assert await crm.requests() == []
        assert await crm.records() == []
        assert (await read_customer(http, customer["id"]))["crm"]["status"] != "synced"


async def test_crm_behind_a_connect_proxy_is_reached_through_it(
    tls_crm: TlsCrm, sqlite_url: str
) -> None:
    crm = tls_crm.control
    port = free_port()
    async with connect_proxy() as proxy:
        env = {
            "RECOVERY_PROBE_SECONDS": PROBE_SECONDS,
            "CRM_CA_BUNDLE": str(tls_crm.ca_file),
            "HTTPS_PROXY": proxy.url,
            # Loopback is not bypassed: NO_PROXY names another host only, in both cases
            # (urllib reads the lower-case one first).
            "NO_PROXY": "example.invalid",
            "no_proxy": "example.invalid",
        }
        async with (
            service_process(sqlite_url, tls_crm.url, port, **env),
            loopback_client(f"http://127.0.0.1:{port}", trust_env=False) as http,
        ):
            customer = await create_customer(http)
            await eventually(lambda: _synced_and_equal(http, crm, customer["id"]))
            assert f"127.0.0.1:{tls_crm.port}" in proxy.targets, proxy.targets
            assert set(proxy.targets) == {f"127.0.0.1:{tls_crm.port}"}, proxy.targets
