"""`CRM_CONNECTOR=salesforce` against the CRM mock's Salesforce face (a live server on
loopback), on both databases: one token for every call, fetched again once when it
expires; creates, updates, deletes and a coalesced run reach sObject Collections; a
record refused in a collection is dead alone; a row lock is retried; REQUEST_LIMIT_EXCEEDED
and a refused token hold deliveries with none dead; a customer without a last name is
dead without a call; reconciliation follows `nextRecordsUrl` and repairs the drift."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import crm_faces as faces
from fastapi import FastAPI
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
from customer_service.sync.connector import Change
from customer_service.sync.connectors.salesforce import SalesforceConnector
from customer_service.sync.models import Operation, QueuedRequest
from customer_service.sync.outcome import Delivered, Failed
from customer_service.sync.retry import is_permanent

DATA = "/services/data/v62.0"
UPSERT = f"{DATA}/composite/sobjects/Contact/Crm_Sync_Id__c"
DELETE = f"{DATA}/composite/sobjects"
QUERY = f"{DATA}/query"
TOKEN = "/services/oauth2/token"
FIELDS = "Id, FirstName, LastName, Email, MailingStreet, MailingCity, MailingPostalCode"


def _salesforce(make_settings: Callable[..., Settings], url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "crm_connector": "salesforce",
        "salesforce_login_url": url,
        "salesforce_client_id": "crm-sync-test",
        "salesforce_client_secret": "test-secret",
    }
    return make_settings(**{**values, **overrides})


def _connector(app: FastAPI) -> SalesforceConnector:
    connector = app.state.delivery.connector
    assert isinstance(connector, SalesforceConnector)
    return connector


async def _soql(crm_url: str, soql: str) -> list[dict[str, Any]]:
    """What the face's `/query` answers (the mock's data calls are open without a token
    while its CRM_API_TOKEN is unset)."""
    async with loopback_client(crm_url, timeout=30) as http:
        answer = await http.get(QUERY, params={"q": soql})
    assert answer.status_code == 200, answer.text
    records: list[dict[str, Any]] = answer.json()["records"]
    return records


async def _contact(crm_url: str, customer_id: int) -> dict[str, Any] | None:
    """The Contact the Salesforce face holds for a customer (by the external id)."""
    soql = f"SELECT {FIELDS} FROM Contact WHERE Crm_Sync_Id__c = '{customer_id}'"
    found = await _soql(crm_url, soql)
    return found[0] if found else None


async def _upsert(crm_url: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Someone else's upsert straight into the face."""
    body = {
        "allOrNone": False,
        "records": [{"attributes": {"type": "Contact"}, **record} for record in records],
    }
    async with loopback_client(crm_url, timeout=30) as http:
        answer = await http.patch(UPSERT, json=body)
    assert answer.status_code == 200, answer.text
    results: list[dict[str, Any]] = answer.json()
    assert all(r["success"] for r in results), results
    return results


async def test_creates_updates_and_deletes_reach_salesforce_by_the_external_id(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    async with faces.service(_salesforce(make_settings, crm.url)) as (app, client):
        customer = await faces.create_nth(client, 1)
        cid = customer["id"]
        await eventually(lambda: faces.synced_at(client, cid, 1))
        first = await read_customer(client, cid)
        contact = await _contact(crm.url, cid)
        assert contact is not None
        assert first["crm"]["id"] == contact["Id"]  # the Salesforce Id is crm.id
        assert {k: contact[k] for k in ("LastName", "MailingStreet", "MailingCity")} == {
            "LastName": "v1",
            "MailingStreet": "12 St James's Square",
            "MailingCity": "London",
        }
        assert contact["MailingPostalCode"] == "SW1Y 4JH"
        await faces.put_changes(
            client, first, lastName="v2", address={**faces.ADDRESS, "city": "Bath"}
        )
        await eventually(lambda: faces.synced_at(client, cid, 2))
        contact = await _contact(crm.url, cid)
        assert contact is not None
        assert (contact["LastName"], contact["MailingCity"]) == ("v2", "Bath")
        assert (await client.delete(f"/api/customers/{cid}")).status_code == 204

        async def gone() -> bool:
            return await _contact(crm.url, cid) is None and not await faces.requests_in(
                client, "pending"
            )

        await eventually(gone)
        # One token served every call.
        assert _connector(app).client.tokens_fetched == 1
    log = [e for e in await crm_control.requests(cid) if e["path"] != QUERY]  # ours
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("PATCH", UPSERT, 201),
        ("PATCH", UPSERT, 200),
        ("DELETE", DELETE, 204),
    ]
    assert log[0]["body"]["Crm_Sync_Id__c"] == str(cid)
    assert log[0]["body"]["attributes"] == {"type": "Contact"}
    tokens = [e for e in await crm_control.requests() if e["path"] == TOKEN]
    assert [e["body"]["grant_type"] for e in tokens] == ["client_credentials"]


async def test_an_expired_token_is_fetched_again_once_and_the_call_sent_again(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    async with faces.service(_salesforce(make_settings, crm.url)) as (app, client):
        customer = await faces.create_nth(client, 1)
        await eventually(lambda: faces.synced_at(client, customer["id"], 1))
        async with loopback_client(crm.url) as http:
            expired = await http.post("/api/crm/_salesforce/expire-tokens")
        assert expired.json() == {"expired": 1}
        await faces.put_changes(client, customer, lastName="v2")
        await eventually(lambda: faces.synced_at(client, customer["id"], 2))
        assert _connector(app).client.tokens_fetched == 2
        assert not await faces.requests_in(client, "failed")
    log = [e for e in await crm_control.requests(customer["id"]) if e["path"] == UPSERT]
    assert [e["status"] for e in log] == [201, 401, 200]
    assert len([e for e in await crm_control.requests() if e["path"] == TOKEN]) == 2


async def test_a_coalesced_run_is_one_record_and_a_delete_without_id_looks_it_up(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = _salesforce(make_settings, crm.url)
    # A run of five, and another customer whose create is discarded, but whose Contact
    # Salesforce has anyway (made below).
    customer, other = await faces.coalesced_run_and_a_lost_create(settings)
    await _upsert(crm.url, [{"Crm_Sync_Id__c": str(other["id"]), "LastName": "Someone"}])
    async with faces.service(settings) as (_, client):
        await operator_retry(client)
        await eventually(lambda: faces.synced_at(client, customer["id"], 5))
        await eventually(lambda: _gone(crm.url, other["id"]))
    upserts = [e for e in await crm_control.requests(customer["id"]) if e["path"] == UPSERT]
    # The create, then its four updates coalesced into one record of the latest.
    assert [u["body"]["LastName"] for u in upserts] == ["v1", "v5"]
    paths = [(e["method"], e["path"]) for e in await crm_control.requests(other["id"])]
    # Its Id never learnt, the delete found it by the external id (a query, not logged
    # under the customer) and deleted it by that Id.
    assert paths[:2] == [("PATCH", UPSERT), ("DELETE", DELETE)]


async def _gone(crm_url: str, customer_id: int) -> bool:
    return await _contact(crm_url, customer_id) is None


async def test_crm_field_map_overrides_the_external_id_field_and_a_field(
    make_settings: Callable[..., Settings],
    crm: LiveServer,
    crm_control: CrmControl,
    tmp_path: Path,
) -> None:
    field_map = tmp_path / "fields.json"
    field_map.write_text('{"id": "Shop_Id__c", "phone": "MailingState", "address.state": "Phone"}')
    settings = _salesforce(make_settings, crm.url, crm_field_map=str(field_map))
    async with faces.service(settings) as (_, client):
        customer = await faces.create_nth(client, 1, phone="+44 20 7946 0000")
        await eventually(lambda: faces.synced_at(client, customer["id"], 1))
    [upsert] = [e for e in await crm_control.requests(customer["id"]) if e["method"] == "PATCH"]
    assert upsert["path"] == f"{DATA}/composite/sobjects/Contact/Shop_Id__c"
    assert upsert["body"]["Shop_Id__c"] == str(customer["id"])
    assert upsert["body"]["MailingState"] == "+44 20 7946 0000"
    assert upsert["body"]["Phone"] is None  # the customer's state: none


async def test_a_record_refused_in_a_collection_is_dead_alone_the_others_delivered(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = _salesforce(make_settings, crm.url)
    ids = await faces.backlog(settings, 8)
    # Our API takes both; Salesforce refuses a last name over 80 and this address.
    [too_long] = await faces.backlog(settings, 1, first=100, lastName="L" * 90)
    [bad_email] = await faces.backlog(settings, 1, email="bad@example.c")
    async with faces.service(settings) as (_, client):
        await operator_retry(client)
        statuses = await faces.crm_statuses(client, [*ids, too_long, bad_email])
        assert statuses == {**dict.fromkeys(ids, "synced"), too_long: "dead", bad_email: "dead"}
        dead = {r["customerId"]: r["lastError"] for r in await faces.requests_in(client, "dead")}
        assert "Salesforce refused this record (STRING_TOO_LONG) [LastName]" in dead[too_long]
        assert "(INVALID_EMAIL_ADDRESS) [Email]" in dead[bad_email]
        # One record's refusal says nothing of Salesforce as a whole: nothing is held.
        assert await faces.held_deliveries(client) is None
    log = [e for e in await crm_control.requests() if e["path"] == UPSERT]
    # All ten in one collection, each record answered on its own.
    assert len(log) == 10 and len({e["receivedAt"] for e in log}) == 1
    assert len(await crm_control.records()) == 8


async def test_a_row_lock_error_is_retried_until_delivered(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = _salesforce(make_settings, crm.url, retry_backoff_base_seconds=0.1)
    ids = await faces.backlog(settings, 4)
    async with faces.service(settings) as (app, client):
        assert await _connector(app).probe() is None  # a token first, while nothing fails
        await crm_control.faults(errorRate=1.0, statusCode=503)  # every record: a row lock
        await operator_retry(client)
        failed = await faces.requests_in(client, "failed")
        assert {r["customerId"] for r in failed} == set(ids)
        assert all("(UNABLE_TO_LOCK_ROW)" in r["lastError"] for r in failed)
        assert await faces.held_deliveries(client) is None
        await crm_control.faults(errorRate=0.0)

        async def all_synced() -> bool:
            await client.post("/api/failed-requests/retry")
            return set((await faces.crm_statuses(client, ids)).values()) == {"synced"}

        await eventually(all_synced)
        assert not await faces.requests_in(client, "dead")
    log = [e for e in await crm_control.requests() if e["path"] == UPSERT]
    assert [e["status"] for e in log].count(503) == 4  # each locked once, then delivered


async def test_request_limit_exceeded_holds_deliveries_then_they_resume(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = _salesforce(make_settings, crm.url, crm_batch_size=1, recovery_probe_seconds=0.2)
    # With the scheduler: its probe finds Salesforce back once the hold lapses.
    async with faces.service(settings, run_scheduler=True) as (app, client):
        assert await _connector(app).probe() is None  # the token
        await crm_control.faults(rateLimitPerSecond=1, retryAfterSeconds=3)
        ids = [(await faces.create_nth(client, n))["id"] for n in range(4)]
        held = await eventually(lambda: faces.held_deliveries(client), interval=0.05)
        assert held["reason"] == "rate_limited"
        assert "403 REQUEST_LIMIT_EXCEEDED" in held["detail"]
        assert "deliveries held until" in held["detail"]
        rows = await faces.requests_in(client, "failed")
        assert rows and all("REQUEST_LIMIT_EXCEEDED" in r["lastError"] for r in rows)
        metrics = (await client.get("/metrics")).text
        assert 'crm_sync_deliveries_held{reason="rate_limited"} 1.0' in metrics
        await crm_control.faults(rateLimitPerSecond=None)

        async def all_synced() -> bool:
            return set((await faces.crm_statuses(client, ids)).values()) == {"synced"}

        await eventually(all_synced, within=20)
        assert await faces.held_deliveries(client) is None
        assert not await faces.requests_in(client, "dead")
    log = [e for e in await crm_control.requests() if e["path"].startswith("/services/")]
    refused = [datetime.fromisoformat(e["receivedAt"]) for e in log if e["status"] == 403]
    assert refused, "no REQUEST_LIMIT_EXCEEDED: the test covers nothing"
    first = min(refused)
    # Held: no call at all, the probe's included, until its Retry-After (3 s) ran out
    # (calls already on their way when the first was refused land within a moment).
    quiet = [
        e
        for e in log
        if first + timedelta(seconds=1)
        < datetime.fromisoformat(e["receivedAt"])
        < first + timedelta(seconds=2.5)
    ]
    assert quiet == []
    assert datetime.now(UTC) - first < timedelta(seconds=60)


async def test_a_refused_token_holds_deliveries_with_none_dead_until_the_secret_is_right(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    mock_settings = CrmSettings(
        _env_file=None,
        crm_database_url=f"sqlite+aiosqlite:///{tmp_path / 'sf.db'}",
        crm_api_token="the-right-secret",
    )
    async with live(LiveServer(lambda: create_crm_app(mock_settings))) as mock:
        wrong = _salesforce(make_settings, mock.url, salesforce_client_secret="a-wrong-one")
        right = wrong.model_copy(update={"salesforce_client_secret": "the-right-secret"})
        await faces.credentials_hold_then_sync(wrong, right, "400 invalid_client")


def _change(customer_id: int, payload: dict[str, Any]) -> Change:
    now = datetime.now(UTC)
    request = QueuedRequest(
        id=customer_id,
        customer_id=customer_id,
        operation=Operation.CREATE,
        status="pending",
        attempts=0,
        last_error=None,
        next_attempt_at=now,
        version=1,
        payload=payload,
        crm_id=None,
        idempotency_key=f"key-{customer_id}",
        created_at=now,
        updated_at=now,
    )
    return Change(request, None)


async def test_a_customer_without_a_last_name_is_dead_without_a_call_the_others_sent(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = _salesforce(make_settings, crm.url)
    connector = SalesforceConnector(settings)
    good = {"id": 7, "firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}
    nameless = {**good, "id": 8, "lastName": None}
    try:
        outcomes = await connector.send([_change(8, nameless), _change(7, good)])
    finally:
        await connector.close()
    missing, delivered = outcomes
    assert isinstance(missing, Failed) and is_permanent(missing.status)
    assert not missing.whole_call
    assert "requires a Contact's LastName" in missing.error
    assert isinstance(delivered, Delivered) and delivered.crm_id
    assert not await crm_control.requests(8)  # never sent
    assert [e["status"] for e in await crm_control.requests(7)] == [201]


async def test_reconciliation_follows_next_records_url_and_repairs_the_drift(
    make_settings: Callable[..., Settings],
    crm: LiveServer,
    crm_control: CrmControl,
    database_url: str,
) -> None:
    settings = _salesforce(make_settings, crm.url)
    async with faces.service(settings) as (_, client):
        ids = [(await faces.create_nth(client, n))["id"] for n in range(5)]

        async def all_synced() -> bool:
            return set((await faces.crm_statuses(client, ids)).values()) == {"synced"}

        await eventually(all_synced)
        changed, lost = ids[1], ids[3]
        lost_id = (await read_customer(client, lost))["crm"]["id"]
        # Edited, deleted, and 200 Contacts made in Salesforce: 204 in all, two pages.
        await _upsert(crm.url, [{"Crm_Sync_Id__c": str(changed), "MailingCity": "Paris"}])
        extra = [str(900_000 + n) for n in range(200)]
        await _upsert(crm.url, [{"Crm_Sync_Id__c": e, "LastName": "Extra"} for e in extra])
        async with loopback_client(crm.url, timeout=30) as http:
            deleted = await http.delete(DELETE, params={"ids": lost_id, "allOrNone": "false"})
            assert deleted.json()[0]["success"] is True
        report = await faces.reconcile(settings, database_url)
        assert (report.missing, report.different) == ([lost], [changed])
        assert sorted(report.extra) == sorted(extra)
        assert report.checked == 5
        more = [e for e in await crm_control.requests() if e["path"].startswith(QUERY + "/")]
        assert more, "the second page was never asked for by its nextRecordsUrl"
        repaired = (await client.post("/api/reconciliation", params={"repair": "true"})).json()
        assert repaired["queued"] == 202

        await eventually(lambda: faces.reconciled_clean(client), within=30, interval=0.3)
    contact = await _contact(crm.url, changed)
    assert contact is not None and contact["MailingCity"] == "London"
    assert await _contact(crm.url, lost) is not None
    assert len(await crm_control.records()) == 5
