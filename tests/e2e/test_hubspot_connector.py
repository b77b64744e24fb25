"""`CRM_CONNECTOR=hubspot` against the CRM mock's HubSpot face (a live server on loopback),
on both databases: creates, updates, deletes and a coalesced run reach HubSpot's batch
endpoints; a 207 settles only the records it names; a batch refused whole for one input is
split until only that input's request is dead; both 429s; a 401 holds deliveries with
none dead; reconciliation pages contacts by the `after` cursor and repairs the drift."""

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import crm_faces as faces
from support import (
    CrmControl,
    LiveServer,
    eventually,
    live,
    loopback_client,
    operator_retry,
    read_customer,
)

from crm_mock.app import create_app as create_crm_app
from crm_mock.config import CrmSettings
from customer_service.config import Settings

TOKEN = "pat-na1-test-0000"
CONTACTS = "/crm/v3/objects/contacts"
UPSERT = f"{CONTACTS}/batch/upsert"
ARCHIVE = f"{CONTACTS}/batch/archive"
READ = f"{CONTACTS}/batch/read"


def _hubspot(make_settings: Callable[..., Settings], url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "crm_connector": "hubspot",
        "hubspot_access_token": TOKEN,
        "hubspot_base_url": url,
    }
    return make_settings(**{**values, **overrides})


async def _contact(crm_url: str, customer_id: int) -> dict[str, Any] | None:
    """The contact HubSpot's face holds for a customer (read by the id property)."""
    async with loopback_client(crm_url, timeout=30) as http:
        answer = await http.post(
            READ,
            json={
                "idProperty": "crm_sync_id",
                "properties": ["firstname", "lastname", "address", "city", "zip", "country"],
                "inputs": [{"id": str(customer_id)}],
            },
        )
    results: list[dict[str, Any]] = answer.json().get("results", [])
    return results[0] if results else None


async def test_creates_updates_and_deletes_reach_hubspot_by_the_id_property(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    async with faces.service(_hubspot(make_settings, crm.url)) as (_, client):
        customer = await faces.create_nth(client, 1)
        cid = customer["id"]

        async def synced(version: int) -> dict[str, Any] | None:
            found = await read_customer(client, cid)
            crm_state = found["crm"]
            ok = crm_state["status"] == "synced" and crm_state["syncedVersion"] == version
            return found if ok else None

        first = await eventually(lambda: synced(1))
        contact = await _contact(crm.url, cid)
        assert contact is not None
        assert first["crm"]["id"] == contact["id"]  # the HubSpot id is crm.id
        assert {k: contact["properties"][k] for k in ("address", "city", "zip", "country")} == {
            "address": "12 St James's Square",
            "city": "London",
            "zip": "SW1Y 4JH",
            "country": "GB",
        }
        await faces.put_changes(
            client, first, lastName="v2", address={**faces.ADDRESS, "city": "Bath"}
        )
        await eventually(lambda: synced(2))
        contact = await _contact(crm.url, cid)
        assert contact is not None
        assert (contact["properties"]["lastname"], contact["properties"]["city"]) == ("v2", "Bath")
        assert (await client.delete(f"/api/customers/{cid}")).status_code == 204

        async def gone() -> bool:
            return await _contact(crm.url, cid) is None and not await faces.requests_in(
                client, "pending"
            )

        await eventually(gone)
        log = [e for e in await crm_control.requests(cid) if e["path"] != READ]  # ours
        assert [(e["path"], e["status"]) for e in log] == [
            (UPSERT, 201),
            (UPSERT, 200),
            (ARCHIVE, 204),
        ]
        assert log[0]["body"]["idProperty"] == "crm_sync_id"
        assert log[0]["body"]["id"] == str(cid)


async def test_a_coalesced_run_of_updates_is_one_upsert_and_a_delete_without_id_looks_it_up(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = _hubspot(make_settings, crm.url)
    # A run of five, and another customer whose create is discarded, but whose contact
    # HubSpot has anyway (made below).
    customer, other = await faces.coalesced_run_and_a_lost_create(settings)
    async with loopback_client(crm.url, timeout=30) as http:
        made = await http.post(
            UPSERT,
            json={
                "inputs": [
                    {
                        "id": str(other["id"]),
                        "idProperty": "crm_sync_id",
                        "properties": {"firstname": "Someone", "email": "someone@example.com"},
                    }
                ]
            },
        )
        assert made.status_code == 200, made.text
    async with faces.service(settings) as (_, client):
        await operator_retry(client)

        async def done() -> bool:
            found = await read_customer(client, customer["id"])
            return found["crm"]["status"] == "synced" and found["crm"]["syncedVersion"] == 5

        await eventually(done)
        await eventually(lambda: _gone(crm.url, other["id"]))
    upserts = [e for e in await crm_control.requests(customer["id"]) if e["path"] == UPSERT]
    # The create, then its four updates coalesced into one input of the latest.
    assert [u["body"]["properties"]["lastname"] for u in upserts] == ["v1", "v5"]
    paths = [e["path"] for e in await crm_control.requests(other["id"])]
    assert paths[:3] == [UPSERT, READ, ARCHIVE]  # then the test's own reads


async def _gone(crm_url: str, customer_id: int) -> bool:
    return await _contact(crm_url, customer_id) is None


async def test_crm_field_map_overrides_the_id_property_and_a_field(
    make_settings: Callable[..., Settings],
    crm: LiveServer,
    crm_control: CrmControl,
    tmp_path: Path,
) -> None:
    field_map = tmp_path / "fields.json"
    swapped = '"address.street": "city", "address.city": "address"'
    field_map.write_text('{"id": "shop_customer_id", ' + swapped + "}")
    settings = _hubspot(make_settings, crm.url, crm_field_map=str(field_map))
    async with faces.service(settings) as (_, client):
        customer = await faces.create_nth(client, 1, address={"street": "Rue X", "city": "Paris"})
        await eventually(lambda: faces.synced_at(client, customer["id"], 1))
    [upsert] = [e for e in await crm_control.requests(customer["id"]) if e["path"] == UPSERT]
    assert upsert["body"]["idProperty"] == "shop_customer_id"
    assert upsert["body"]["properties"]["shop_customer_id"] == str(customer["id"])
    assert upsert["body"]["properties"]["city"] == "Rue X"
    assert upsert["body"]["properties"]["address"] == "Paris"


async def test_a_207_settles_only_the_records_it_names(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = _hubspot(make_settings, crm.url)
    ids = await faces.backlog(settings, 20)
    # Each record draws: a drawn one is refused on its own, for good (a 400).
    await crm_control.faults(errorRate=0.3, statusCode=400)
    async with faces.service(settings) as (_, client):
        await operator_retry(client)
        await crm_control.faults(errorRate=0.0)
        log = [e for e in await crm_control.requests() if e["path"] == UPSERT]
        refused = {int(e["externalId"]) for e in log if e["status"] == 400}
        assert refused and refused != set(ids), "the draws refused none, or all"
        statuses = await faces.crm_statuses(client, ids)
        assert {i for i, s in statuses.items() if s == "dead"} == refused
        assert {i for i, s in statuses.items() if s == "synced"} == set(ids) - refused
        dead = await faces.requests_in(client, "dead")
        assert all("HubSpot refused this record (400" in r["lastError"] for r in dead)
        # One record's refusal says nothing of HubSpot as a whole: nothing is held.
        ready = (await client.get("/ready")).json()
        assert ready["deliveries"]["held"] is False


async def test_a_batch_refused_whole_for_one_input_is_split_until_it_is_alone(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = _hubspot(make_settings, crm.url)
    ids = await faces.backlog(settings, 9)
    # Our API takes this address; HubSpot (the face) refuses it, and the whole batch.
    [bad] = await faces.backlog(settings, 1, email="bad@example.c")
    async with faces.service(settings) as (_, client):
        await operator_retry(client)
        statuses = await faces.crm_statuses(client, [*ids, bad])
        assert statuses == {**dict.fromkeys(ids, "synced"), bad: "dead"}
        [dead] = await faces.requests_in(client, "dead")
        assert dead["customerId"] == bad
        assert "HubSpot answered 400 VALIDATION_ERROR" in dead["lastError"]
    log = [e for e in await crm_control.requests() if e["path"] == UPSERT]
    # The first call, all ten refused; then halves, down to the bad input alone.
    assert sum(1 for e in log if e["status"] == 400) > 10
    assert {e["externalId"] for e in log if e["status"] in (200, 201)} == {str(i) for i in ids}
    assert len(await crm_control.records()) == 9


async def test_the_ten_secondly_429_pauses_every_call_for_the_window(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = _hubspot(make_settings, crm.url, crm_batch_size=2)
    ids = await faces.backlog(settings, 24)
    await crm_control.faults(rateLimitPerSecond=50)
    async with faces.service(settings) as (_, client):
        # A first answer states 50 a second; then HubSpot lowers the limit to 2, and the
        # calls already paced at 50 meet it: some are 429.
        assert (await client.post("/api/reconciliation")).status_code == 200  # a read first
        await crm_control.faults(rateLimitPerSecond=2, retryAfterSeconds=2)
        await operator_retry(client)

        async def all_synced() -> bool:
            await client.post("/api/failed-requests/retry")
            return set((await faces.crm_statuses(client, ids)).values()) == {"synced"}

        await eventually(all_synced, within=60, interval=0.5)
        assert not await faces.requests_in(client, "dead")
    log = [e for e in await crm_control.requests() if e["path"] == UPSERT]
    limited = [e for e in log if e["status"] == 429]
    assert limited, "no 429: the test covers nothing"
    first = datetime.fromisoformat(limited[0]["receivedAt"])
    # Calls in flight when it came land within a moment; then none for its Retry-After.
    paused = [
        e
        for e in log
        if first + timedelta(seconds=0.5)
        < datetime.fromisoformat(e["receivedAt"])
        < first + timedelta(seconds=1.8)
    ]
    assert paused == []


async def test_rate_limit_headers_pace_calls_before_any_429(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    await crm_control.faults(rateLimitPerSecond=3)
    async with faces.service(_hubspot(make_settings, crm.url)) as (_, client):
        first = await faces.create_nth(client, 0)
        # The first answer's headers told the limit: what follows keeps under it.
        await eventually(lambda: faces.synced_at(client, first["id"], 1))
        ids = [(await faces.create_nth(client, n))["id"] for n in range(1, 16)]

        async def synced() -> bool:
            return set((await faces.crm_statuses(client, [first["id"], *ids])).values()) == {
                "synced"
            }

        await eventually(synced, within=30)
    log = [e for e in await crm_control.requests() if e["path"] == UPSERT]
    assert 429 not in [e["status"] for e in log], [(e["status"], e["receivedAt"]) for e in log]


async def test_the_daily_429_holds_deliveries_until_the_reset_and_shows_it(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    async with faces.service(_hubspot(make_settings, crm.url)) as (app, client):
        customer = await faces.create_nth(client, 1)
        await eventually(lambda: faces.synced_at(client, customer["id"], 1))
        await crm_control.faults(dailyLimit=1)  # one more call today
        await faces.put_changes(client, customer, lastName="v2")
        await eventually(lambda: faces.synced_at(client, customer["id"], 2))
        await faces.put_changes(client, customer, lastName="v3")
        held = await eventually(lambda: faces.held_deliveries(client))
        assert held["reason"] == "rate_limited"
        assert "DAILY" in held["detail"] and "deliveries held until" in held["detail"]
        [row] = await eventually(lambda: faces.requests_in(client, "failed"))
        assert "DAILY" in row["lastError"]
        # Not due again before the reset (HubSpot's Retry-After: the next midnight).
        due = datetime.fromisoformat(row["nextAttemptAt"])
        assert due - datetime.fromisoformat(row["updatedAt"]) > timedelta(seconds=1)
        metrics = (await client.get("/metrics")).text
        assert 'crm_sync_deliveries_held{reason="rate_limited"} 1.0' in metrics
        dashboard = (await client.get("/dashboard")).text
        assert "DAILY" in dashboard
        calls = len(await crm_control.requests())
        # Held: a write, a probe and an operator's retry call HubSpot no more today.
        await crm_control.faults(dailyLimit=None)
        await faces.put_changes(client, customer, lastName="v4")
        await client.post("/api/failed-requests/retry")
        probe = await app.state.delivery.connector.probe()
        assert probe is not None and probe.kind == "rate_limited"
        assert len(await crm_control.requests()) == calls
        assert (await read_customer(client, customer["id"]))["crm"]["status"] == "failed"
        assert not await faces.requests_in(client, "dead")


async def test_a_401_holds_deliveries_with_none_dead_until_the_token_is_right(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    mock_settings = CrmSettings(
        _env_file=None,
        crm_database_url=f"sqlite+aiosqlite:///{tmp_path / 'hs.db'}",
        crm_api_token="pat-na1-right",
    )
    async with live(LiveServer(lambda: create_crm_app(mock_settings))) as mock:
        wrong = _hubspot(make_settings, mock.url, hubspot_access_token="pat-na1-wrong")
        right = wrong.model_copy(update={"hubspot_access_token": "pat-na1-right"})
        await faces.credentials_hold_then_sync(wrong, right, "401 INVALID_AUTHENTICATION")


async def test_reconciliation_pages_contacts_by_cursor_and_repairs_the_drift(
    make_settings: Callable[..., Settings],
    crm: LiveServer,
    crm_control: CrmControl,
    database_url: str,
) -> None:
    settings = _hubspot(make_settings, crm.url)
    async with faces.service(settings) as (_, client):
        ids = [(await faces.create_nth(client, n))["id"] for n in range(5)]

        async def all_synced() -> bool:
            return set((await faces.crm_statuses(client, ids)).values()) == {"synced"}

        await eventually(all_synced)
        changed, lost = ids[1], ids[3]
        lost_id = (await read_customer(client, lost))["crm"]["id"]
        async with loopback_client(crm.url, timeout=30) as http:
            edits = [
                {"id": str(changed), "idProperty": "crm_sync_id", "properties": {"city": "Paris"}},
                {
                    "id": "900001",
                    "idProperty": "crm_sync_id",
                    "properties": {"firstname": "Extra", "email": "extra@example.com"},
                },
            ]
            assert (await http.post(UPSERT, json={"inputs": edits})).status_code == 200
            archived = await http.post(ARCHIVE, json={"inputs": [{"id": lost_id}]})
            assert archived.status_code == 204
        # Two contacts a page: the run must follow HubSpot's `after` cursor to see all.
        report = await faces.reconcile(settings, database_url)
        assert (report.missing, report.extra, report.different) == ([lost], ["900001"], [changed])
        assert report.checked == 5
        repaired = (await client.post("/api/reconciliation", params={"repair": "true"})).json()
        assert repaired["queued"] == 3

        await eventually(lambda: faces.reconciled_clean(client), within=30, interval=0.3)
    contact = await _contact(crm.url, changed)
    assert contact is not None and contact["properties"]["city"] == "London"
    assert await _contact(crm.url, lost) is not None
    assert not await crm_control.records("900001")
