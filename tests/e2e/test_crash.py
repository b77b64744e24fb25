"""Guarantee 1 under `kill -9`: the service process dies with deliveries in flight."""

import signal
from typing import Any

from support import (
    CrmControl,
    LiveServer,
    crm_view,
    eventually,
    expected_crm_record,
    free_port,
    loopback_client,
    service_process,
)


async def test_sigkill_between_commit_and_delivery_loses_nothing(
    database_url: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    written: list[dict[str, Any]] = []
    await crm_control.faults(latencyMs=3000)
    async with (
        service_process(database_url, crm.url, port) as process,
        loopback_client(url) as http,
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
        loopback_client(url) as http,
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
