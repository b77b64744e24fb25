"""Guarantee 1 under `kill -9`: the service process dies with deliveries in flight."""

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from support import CrmControl, LiveServer, crm_view, eventually, expected_crm_record, free_port


@asynccontextmanager
async def service_process(
    database_url: str, crm_url: str, port: int
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`customer-service serve` as a real process; SIGKILLed on the way out if still alive."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CRM_BASE_URL": crm_url,
        "PORT": str(port),
        "CRM_TIMEOUT_SECONDS": "10",
        "RETRY_INTERVAL_SECONDS": "3600",
        "RECOVERY_PROBE_SECONDS": "0.2",
        # The killed process's claims lapse after this; short, so the test is quick.
        "CLAIM_LEASE_SECONDS": "2",
    }
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited on
        [sys.executable, "-m", "customer_service", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

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


async def test_sigkill_between_commit_and_delivery_loses_nothing(
    database_url: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    written: list[dict[str, Any]] = []
    await crm_control.faults(latencyMs=3000)
    async with (
        service_process(database_url, crm.url, port) as process,
        httpx.AsyncClient(base_url=url) as http,
    ):
        for n in range(3):
            body = {"firstName": f"C{n}", "lastName": "Crash", "email": f"k{n}@example.com"}
            response = await http.post("/api/customers", json=body)
            assert response.status_code == 201
            customer = response.json()
            response = await http.put(
                f"/api/customers/{customer['id']}", json={**body, "lastName": "Updated"}
            )
            assert response.status_code == 200
            written.append(response.json())
        # Every CREATE is in flight at the slow CRM; nothing is recorded as delivered.
        assert (await http.get("/api/failed-requests")).json()["total"] == 6
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    await crm_control.faults(latencyMs=0)
    async with (
        service_process(database_url, crm.url, port),
        httpx.AsyncClient(base_url=url) as http,
    ):

        async def all_synced() -> bool:
            for customer in written:
                current = (await http.get(f"/api/customers/{customer['id']}")).json()
                if current["crm"]["status"] != "synced":
                    return False
            return True

        await eventually(all_synced, within=30)
        assert (await http.get("/api/failed-requests")).json()["total"] == 0
        for customer in written:
            current = (await http.get(f"/api/customers/{customer['id']}")).json()
            records = await crm_control.records(customer["id"])
            assert len(records) == 1, records
            assert crm_view(records[0]) == expected_crm_record(current)
            assert current["crm"]["syncedVersion"] == 2
