"""`kill -9` of a `customer-service serve` process while its Salesforce collections upsert
is in flight: the process that follows sends the records again, and the upsert by the
external id finds the Contacts the first call made. No Contact is lost, none is made
twice."""

from typing import Any

from crm_faces import (
    assert_each_made_once,
    assert_one_record_each,
    is_synced,
    kill_while_sending,
    landed_after_kill,
)
from support import CrmControl, LiveServer, eventually, free_port, loopback_client, service_process


def _salesforce(crm_url: str) -> dict[str, str]:
    return {
        "CRM_CONNECTOR": "salesforce",
        "SALESFORCE_LOGIN_URL": crm_url,
        "SALESFORCE_CLIENT_ID": "crm-sync-crash",
        "SALESFORCE_CLIENT_SECRET": "crash-secret",
    }


async def test_sigkill_mid_batch_leaves_no_duplicate_contact(
    database_url: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _salesforce(crm.url)
    written: list[dict[str, Any]] = []
    async with (
        service_process(database_url, crm.url, port, **env) as process,
        loopback_client(url) as http,
    ):
        # A first Contact, so the token is had before the face slows down.
        body = {"firstName": "K", "lastName": "First", "email": "first@example.com"}
        first = (await http.post("/api/customers", json=body)).json()
        await eventually(lambda: is_synced(http, first["id"]), within=30)
        # The face down while the five are written: their deliveries are held and go in
        # one collection when it answers again (slowly), or two when the first write's
        # delivery failed before the breaker opened (the recovery pass retries it, the
        # held ones go by their kicks): `landed_after_kill` asks for at least one.
        await crm_control.faults(down=True)
        for n in range(5):
            body = {"firstName": f"K{n}", "lastName": "Crash", "email": f"sk{n}@example.com"}
            response = await http.post("/api/customers", json=body)
            assert response.status_code == 201
            written.append(response.json())
        await crm_control.faults(down=False, latencyMs=2000)
        await kill_while_sending(http, crm_control, process, len(written))

    # The call the dead process made lands all the same: Contacts exist, unknown to us.
    await landed_after_kill(crm_control, at_least=2)
    await crm_control.faults(latencyMs=0)
    async with service_process(database_url, crm.url, port, **env), loopback_client(url) as http:

        async def all_synced() -> bool:
            return all([await is_synced(http, c["id"]) for c in written])

        await eventually(all_synced, within=30)
        await assert_one_record_each(http, crm_control, written)
    assert len(await crm_control.records()) == 6
    await assert_each_made_once(crm_control, written)
