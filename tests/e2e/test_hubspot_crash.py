"""`kill -9` of a `customer-service serve` process while its HubSpot batch upsert is in
flight: the process that follows sends the batch again, and the upsert by the id property
finds the contacts the first call made. No contact is lost, none is made twice."""

from typing import Any

from crm_faces import (
    assert_each_made_once,
    assert_one_record_each,
    kill_while_sending,
    landed_after_kill,
)
from support import CrmControl, LiveServer, eventually, free_port, loopback_client, service_process

HUBSPOT = {"CRM_CONNECTOR": "hubspot", "HUBSPOT_ACCESS_TOKEN": "pat-na1-crash"}


async def test_sigkill_mid_batch_leaves_no_duplicate_contact(
    database_url: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**HUBSPOT, "HUBSPOT_BASE_URL": crm.url}
    written: list[dict[str, Any]] = []
    # The CRM down while the five are written (a new process starts suspect and asks it
    # first): their deliveries are held, and go in one batch call when it answers again
    # (slowly).
    await crm_control.faults(down=True)
    async with (
        service_process(database_url, crm.url, port, **env) as process,
        loopback_client(url) as http,
    ):
        for n in range(5):
            body = {"firstName": f"K{n}", "lastName": "Crash", "email": f"hk{n}@example.com"}
            response = await http.post("/api/customers", json=body)
            assert response.status_code == 201
            written.append(response.json())
        await crm_control.faults(down=False, latencyMs=2000)
        await kill_while_sending(http, crm_control, process, len(written))

    # The call the dead process made lands all the same: contacts exist, unknown to us.
    await landed_after_kill(crm_control, at_least=1)
    await crm_control.faults(latencyMs=0)
    async with service_process(database_url, crm.url, port, **env), loopback_client(url) as http:

        async def all_synced() -> bool:
            for customer in written:
                current = (await http.get(f"/api/customers/{customer['id']}")).json()
                if current["crm"]["status"] != "synced":
                    return False
            return True

        await eventually(all_synced, within=30)
        await assert_one_record_each(http, crm_control, written)
    assert len(await crm_control.records()) == 5
    await assert_each_made_once(crm_control, written)
