"""Test helpers: live servers on loopback, polling with a deadline, database set-up."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

T = TypeVar("T")

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TABLES = ("customers", "failed_requests", "sync_claims", "sink_customers", "unconfirmed_events")


def postgres_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_URL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# uvicorn closes a keep-alive connection after 5 s idle, and httpx keeps one for 5 s by
# default: a request sent on a connection as the server closes it fails with ReadError
# (seen in CI on a busy machine). Clients of real servers drop idle ones well before.
KEEPALIVE_EXPIRY = 1.0


def loopback_client(base_url: str = "", **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for a real server on loopback that never reuses a connection the
    server may be closing."""
    return httpx.AsyncClient(
        base_url=base_url, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY), **kwargs
    )


async def eventually(
    check: Callable[[], Awaitable[T]], within: float = 15.0, interval: float = 0.05
) -> T:
    """Poll `check` until it returns a truthy value; fail with its last value at the deadline."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = await check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s; last: {last!r}")
        await asyncio.sleep(interval)


class LiveServer:
    """A real uvicorn server for `app` on 127.0.0.1, in this event loop; stop and start
    it again on the same port to simulate a process going away."""

    def __init__(self, app_factory: Callable[[], FastAPI], port: int | None = None) -> None:
        self._factory = app_factory
        self.port = port or free_port()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        config = uvicorn.Config(
            self._factory(),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        await eventually(
            lambda: asyncio.sleep(0, self._server is not None and self._server.started)
        )

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, timeout=10)
        self._server = None
        self._task = None


@contextlib.asynccontextmanager
async def live(server: LiveServer) -> AsyncIterator[LiveServer]:
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def reset_postgres(url: str) -> None:
    """Empty our tables (the schema stays, migrated once per session)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
    finally:
        await engine.dispose()


async def create_database(server_url: str, name: str) -> str:
    """A new, empty database `name` on the server of `server_url`; returns its URL."""
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    return str(make_url(server_url).set(database=name).render_as_string(hide_password=False))


async def drop_database(server_url: str, name: str) -> None:
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


class CrmControl:
    """Drive the CRM mock over HTTP: its fault switch, its records, its request log."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = loopback_client(base_url, timeout=30)

    async def faults(self, **changes: Any) -> dict[str, Any]:
        response = await self.http.put("/api/crm/_faults", json=changes)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def records(self, external_id: str | int | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 1000}
        if external_id is not None:
            params["externalId"] = str(external_id)
        response = await self.http.get("/api/crm/customers", params=params)
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def requests(self, external_id: str | int | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 100000}
        if external_id is not None:
            params["externalId"] = str(external_id)
        response = await self.http.get("/api/crm/_requests", params=params)
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def calls(self) -> list[dict[str, Any]]:
        """The calls the CRM is answering now (`GET /api/crm/_calls`)."""
        response = await self.http.get("/api/crm/_calls")
        response.raise_for_status()
        calls: list[dict[str, Any]] = response.json()["calls"]
        return calls

    async def close(self) -> None:
        await self.http.aclose()


def expected_crm_record(customer: dict[str, Any]) -> dict[str, Any]:
    """What the CRM must hold for a customer as the service's API shows it."""
    address = customer.get("address") or {}
    parts = [address.get(k) for k in ("street", "city", "state", "postalCode", "country")]
    return {
        "externalId": str(customer["id"]),
        "firstName": customer["firstName"],
        "lastName": customer["lastName"],
        "email": customer["email"],
        "phone": customer["phone"],
        "address": ", ".join(p for p in parts if p),
    }


def crm_view(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("externalId", "firstName", "lastName", "email", "phone", "address")
    return {k: record.get(k) for k in keys}


def _service_log() -> Any:
    """Where a service process logs: nowhere, unless CRM_SYNC_TEST_SERVICE_LOG names a file
    (to read what a failing test's process said)."""
    path = os.environ.get("CRM_SYNC_TEST_SERVICE_LOG")
    return open(path, "ab") if path else open(os.devnull, "wb")


@contextlib.asynccontextmanager
async def service_process(
    database_url: str, crm_url: str, port: int, **env: str
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`customer-service serve` as a real process, with `env` on top of the test's
    defaults; SIGKILLed on the way out if still alive."""
    values = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CRM_BASE_URL": crm_url,
        "PORT": str(port),
        "CRM_TIMEOUT_SECONDS": "10",
        "RETRY_INTERVAL_SECONDS": "3600",
        "RECOVERY_PROBE_SECONDS": "0.2",
        # A killed process's claims lapse after this; short, so tests are quick.
        "CLAIM_LEASE_SECONDS": "2",
        **env,
    }
    log = _service_log()
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited on
        [sys.executable, "-m", "customer_service", "serve"],
        env=values,
        stdout=log,
        stderr=log,
    )
    try:
        async with loopback_client(f"http://127.0.0.1:{port}") as http:

            async def up() -> bool:
                assert process.poll() is None, "the service exited at start-up"
                try:
                    return (await http.get("/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(up, within=30)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        log.close()


ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}
# Ada as an outbox row's payload (the customer's own fields, the address's flattened), as
# the CRM mappings take it.
ADA_PAYLOAD = {
    "id": 42,
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": None,
    "address.street": "12 St James's Square",
    "address.city": "London",
    "address.state": None,
    "address.postalCode": "SW1Y 4JH",
    "address.country": "GB",
}


async def create_customer(
    client: httpx.AsyncClient, email: str = "ada@example.com"
) -> dict[str, Any]:
    """POST Ada (with `email`) to the customer service; the 201 body."""
    response = await client.post("/api/customers", json={**ADA, "email": email})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def update_customer(
    client: httpx.AsyncClient, customer: dict[str, Any], **changes: Any
) -> None:
    body = {**ADA, "email": customer["email"], **changes}
    response = await client.put(f"/api/customers/{customer['id']}", json=body)
    assert response.status_code == 200, response.text


async def read_customer(client: httpx.AsyncClient, customer_id: int) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/api/customers/{customer_id}")).json()
    return body


async def deliveries_idle(client: httpx.AsyncClient) -> bool:
    """No delivery kicked by a write is running in the service (its metrics say)."""
    metrics = (await client.get("/metrics")).text
    return "crm_sync_deliveries_in_flight 0.0\n" in metrics


async def settled(client: httpx.AsyncClient) -> bool:
    """No delivery running and none waiting: a write's kick may not have started its
    delivery yet when the in-flight gauge reads 0, but its pending row is already there."""
    pending = await client.get("/api/failed-requests", params={"status": "pending"})
    return not pending.json()["total"] and await deliveries_idle(client)


async def operator_retry(client: httpx.AsyncClient) -> dict[str, int]:
    """`POST /api/failed-requests/retry` once the deliveries kicked by earlier writes are
    done, so none of them holds a customer the pass then skips as busy."""
    await eventually(lambda: deliveries_idle(client))
    response = await client.post("/api/failed-requests/retry")
    assert response.status_code == 200, response.text
    body: dict[str, int] = response.json()
    return body


async def assert_equal_sides(client: httpx.AsyncClient, crm: CrmControl, customer_id: int) -> None:
    """The CRM holds exactly one record of the customer, equal to it, and the customer
    says so (`synced` at its version, with that record's id)."""
    customer = await read_customer(client, customer_id)
    records = await crm.records(customer_id)
    assert len(records) == 1, records
    assert crm_view(records[0]) == expected_crm_record(customer)
    assert customer["crm"] == {
        "id": records[0]["id"],
        "status": "synced",
        "syncedVersion": customer["version"],
    }


class FakeConnector:
    """A connector (`sync.connector.Connector`) whose answers a test writes: `answer` gives
    each change's outcome. Counts the calls, the calls in flight and the batches sent."""

    confirms_later = False

    def __init__(
        self,
        answer: Callable[[Any], Awaitable[Any]],
        batch_size: int = 1,
        calls_in_flight: int = 64,
    ) -> None:
        self.answer = answer
        self.batch_size = batch_size
        self.calls_in_flight = calls_in_flight
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.batches: list[list[int]] = []

    async def start(self, serving: bool) -> None:
        del serving

    async def close(self) -> None:
        pass

    async def send(self, changes: Any) -> list[Any]:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.batches.append([change.customer_id for change in changes])
        try:
            return [await self.answer(change) for change in changes]
        finally:
            self.in_flight -= 1

    async def probe(self) -> None:
        return None

    def reader(self) -> Any:
        raise NotImplementedError("no CRM records behind a fake connector")


async def post_customers(app: Any, count: int, name: str) -> list[int]:
    """`count` customers written through the app's API (in process), their ids in order."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
        ids = []
        for n in range(count):
            body = {
                "firstName": name,
                "lastName": f"{n}",
                "email": f"{name.lower()}{n}@example.com",
            }
            ids.append((await client.post("/api/customers", json=body)).json()["id"])
    return ids
