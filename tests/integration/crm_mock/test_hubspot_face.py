"""The CRM mock's HubSpot face (`crm_mock.hubspot`), on a live server on loopback.

HubSpot's own Python client (`hubspot-api-client`, pointed at the mock through its
`host` setting) upserts, reads by the id property, lists with the `after` cursor and
archives, and parses every answer with its own models: the proof that the face answers
in HubSpot's shapes. Plain HTTP then checks what the client hides: the 207 of records
the `errorRate` draws, the whole-batch 400, both 429s with their headers and body, the
401, and one request-log entry per record.
"""

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchInputSimplePublicObjectId,
    BatchReadInputSimplePublicObjectId,
    BatchResponseSimplePublicObject,
    BatchResponseSimplePublicObjectWithErrors,
    BatchResponseSimplePublicUpsertObject,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
)
from hubspot.crm.contacts.exceptions import ApiException
from support import LiveServer, live, loopback_client

from crm_mock.app import create_app
from crm_mock.config import CrmSettings
from crm_mock.deps import CrmRuntime
from crm_mock.faults import RateWindow

CONTACTS = "/crm/v3/objects/contacts"
UPSERT = f"{CONTACTS}/batch/upsert"
ARCHIVE = f"{CONTACTS}/batch/archive"
READ = f"{CONTACTS}/batch/read"
CUSTOMERS = "/api/crm/customers"
FAULTS = "/api/crm/_faults"
REQUESTS = "/api/crm/_requests"
ID_PROPERTY = "crm_sync_id"
RATE_HEADERS = (
    "x-hubspot-ratelimit-max",
    "x-hubspot-ratelimit-remaining",
    "x-hubspot-ratelimit-interval-milliseconds",
    "x-hubspot-ratelimit-daily",
    "x-hubspot-ratelimit-daily-remaining",
)


@dataclass
class Mock:
    url: str
    app: FastAPI
    http: httpx.AsyncClient

    @property
    def runtime(self) -> CrmRuntime:
        runtime: CrmRuntime = self.app.state.runtime
        return runtime


StartMock = Callable[..., AbstractAsyncContextManager[Mock]]


@pytest.fixture
def start(crm_database_url: str) -> StartMock:
    """Start the CRM mock as a real server on loopback (optionally with an API token)."""

    @asynccontextmanager
    async def started(api_token: str = "") -> AsyncIterator[Mock]:
        settings = CrmSettings(
            _env_file=None, crm_database_url=crm_database_url, crm_api_token=api_token
        )
        app = create_app(settings)
        async with (
            live(LiveServer(lambda: app)) as server,
            loopback_client(server.url, timeout=30) as http,
        ):
            yield Mock(server.url, app, http)

    return started


@pytest.fixture
async def mock(start: StartMock) -> AsyncIterator[Mock]:
    async with start() as running:
        yield running


class Draws(random.Random):
    """The runtime's random numbers: these draws in order, then 0.99."""

    def __init__(self, draws: Iterable[float]) -> None:
        super().__init__()
        self._draws = list(draws)

    def random(self) -> float:
        return self._draws.pop(0) if self._draws else 0.99


class OneSecond(RateWindow):
    """The rate window never moving to a new second, so a limit test cannot straddle two."""

    def admit(self, now: float, limit: int | None) -> bool:
        self.second = int(now)
        return super().admit(now, limit)

    def used(self, now: float) -> int:
        return self.count


def contact(external_id: str, **overrides: Any) -> dict[str, Any]:
    """A batch upsert input for the customer `external_id`."""
    properties: dict[str, Any] = {
        "firstname": "Ada",
        "lastname": "Lovelace",
        "email": f"ada{external_id}@example.com",
        "phone": "+44 20 7946 0000",
        "address": "12 St James's Square",
        "city": "London",
        "zip": "SW1Y 4JH",
        "country": "GB",
    }
    properties.update(overrides)
    return {"id": external_id, "idProperty": ID_PROPERTY, "properties": properties}


def client_of(mock: Mock, token: str = "any") -> Any:
    """HubSpot's official client, pointed at the mock."""
    return HubSpot(access_token=token, host=mock.url)


async def upsert(mock: Mock, inputs: list[Any], **headers: str) -> httpx.Response:
    return await mock.http.post(UPSERT, json={"inputs": inputs}, headers=headers)


async def set_faults(mock: Mock, **settings: Any) -> None:
    response = await mock.http.put(FAULTS, json=settings)
    assert response.status_code == 200, response.text


async def records(mock: Mock) -> dict[str, dict[str, Any]]:
    """The mock's own view of every record, by externalId."""
    response = await mock.http.get(CUSTOMERS, params={"limit": 1000})
    assert response.status_code == 200
    return {record["externalId"]: record for record in response.json()["items"]}


async def face_log(mock: Mock) -> list[tuple[str, int, str | None]]:
    """The request log's HubSpot entries: (path, status, externalId)."""
    items = (await mock.http.get(REQUESTS)).json()["items"]
    return [
        (e["path"], e["status"], e["externalId"]) for e in items if e["path"].startswith(CONTACTS)
    ]


def assert_hubspot_error(response: httpx.Response, status: int, category: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["status"] == "error"
    assert body["category"] == category
    assert body["message"]
    assert body["correlationId"]
    return body


# --- the official client ---------------------------------------------------------------


async def test_the_official_client_upserts_reads_lists_and_archives(mock: Mock) -> None:
    api = client_of(mock).crm.contacts
    first = BatchInputSimplePublicObjectBatchInputUpsert(
        inputs=[
            SimplePublicObjectBatchInputUpsert(
                id=str(n), id_property=ID_PROPERTY, properties=contact(str(n))["properties"]
            )
            for n in (1, 2, 3)
        ]
    )

    created = await asyncio.to_thread(api.batch_api.upsert, first)

    assert isinstance(created, BatchResponseSimplePublicUpsertObject)
    assert created.status == "COMPLETE"
    assert created.started_at <= created.completed_at
    assert [r.new for r in created.results] == [True, True, True]
    by_external = {r.properties[ID_PROPERTY]: r for r in created.results}
    assert set(by_external) == {"1", "2", "3"}
    one = by_external["1"]
    assert one.properties["firstname"] == "Ada"
    assert one.properties["email"] == "ada1@example.com"
    assert one.properties["hs_object_id"] == one.id
    assert one.archived is False
    # The mock's own API shows the same records, the address parts joined.
    own = await records(mock)
    assert own["1"]["id"] == one.id
    assert own["1"]["address"] == "12 St James's Square, London, SW1Y 4JH, GB"
    assert (own["1"]["firstName"], own["1"]["phone"]) == ("Ada", "+44 20 7946 0000")

    # An update changes only the properties sent; a new id is created alongside.
    second = BatchInputSimplePublicObjectBatchInputUpsert(
        inputs=[
            SimplePublicObjectBatchInputUpsert(
                id="1",
                id_property=ID_PROPERTY,
                properties={"city": "Paris", "firstname": "Augusta"},
            ),
            SimplePublicObjectBatchInputUpsert(
                id="4", id_property=ID_PROPERTY, properties=contact("4")["properties"]
            ),
        ]
    )
    updated = await asyncio.to_thread(api.batch_api.upsert, second)

    assert [(r.properties[ID_PROPERTY], r.new) for r in updated.results] == [
        ("1", False),
        ("4", True),
    ]
    again = updated.results[0]
    assert again.id == one.id
    assert (again.properties["firstname"], again.properties["lastname"]) == ("Augusta", "Lovelace")
    assert (again.properties["address"], again.properties["city"]) == (
        "12 St James's Square",
        "Paris",
    )
    assert again.updated_at > one.updated_at
    assert (await records(mock))["1"]["address"] == "12 St James's Square, Paris, SW1Y 4JH, GB"

    # Read by the id property: found, and a 207 naming the one no contact has.
    read = await asyncio.to_thread(
        api.batch_api.read,
        BatchReadInputSimplePublicObjectId(
            inputs=[SimplePublicObjectId(id="4"), SimplePublicObjectId(id="99")],
            id_property=ID_PROPERTY,
            properties=["firstname", "city", ID_PROPERTY],
            properties_with_history=[],
        ),
    )
    assert isinstance(read, BatchResponseSimplePublicObjectWithErrors)
    assert [r.properties[ID_PROPERTY] for r in read.results] == ["4"]
    assert read.results[0].properties["city"] == "London"
    assert "lastname" not in read.results[0].properties
    assert [(e.category, e.context) for e in read.errors] == [("OBJECT_NOT_FOUND", {"ids": ["99"]})]
    read_all = await asyncio.to_thread(
        api.batch_api.read,
        BatchReadInputSimplePublicObjectId(
            inputs=[SimplePublicObjectId(id=one.id)], properties=[], properties_with_history=[]
        ),
    )
    assert isinstance(read_all, BatchResponseSimplePublicObject)
    assert [r.id for r in read_all.results] == [one.id]

    # The list, two at a time, following the cursor.
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = await asyncio.to_thread(
            api.basic_api.get_page, limit=2, after=after, properties=["firstname", ID_PROPERTY]
        )
        pages += 1
        seen += [r.properties[ID_PROPERTY] for r in page.results]
        assert all(set(r.properties) >= {"firstname", "hs_object_id"} for r in page.results)
        if page.paging is None:
            break
        after = page.paging.next.after
    assert pages == 2
    assert sorted(seen) == ["1", "2", "3", "4"]
    ids = [r.id for r in created.results]
    assert [r.id for r in (await asyncio.to_thread(api.basic_api.get_page, limit=10)).results] == (
        sorted([*ids, updated.results[1].id])
    )

    # Archive two: gone from the mock's own API too.
    archived = await asyncio.to_thread(
        api.batch_api.archive,
        BatchInputSimplePublicObjectId(inputs=[SimplePublicObjectId(id=i) for i in ids[:2]]),
    )
    assert archived is None  # 204
    assert sorted(await records(mock)) == ["3", "4"]


async def test_the_official_client_sees_the_whole_batch_refusal_as_a_400(mock: Mock) -> None:
    api = client_of(mock).crm.contacts
    batch = BatchInputSimplePublicObjectBatchInputUpsert(
        inputs=[
            SimplePublicObjectBatchInputUpsert(
                id="1", id_property=ID_PROPERTY, properties={"email": "not-an-email"}
            )
        ]
    )

    with pytest.raises(ApiException) as refused:
        await asyncio.to_thread(api.batch_api.upsert, batch)

    assert refused.value.status == 400
    body = json.loads(refused.value.body)
    assert (body["category"], body["errors"][0]["code"]) == ("VALIDATION_ERROR", "INVALID_EMAIL")
    assert await records(mock) == {}


# --- upsert rules ----------------------------------------------------------------------


async def test_an_invalid_email_refuses_the_whole_batch_naming_the_input(mock: Mock) -> None:
    inputs = [contact("1"), contact("2", email="ada@nowhere"), contact("3")]

    response = await upsert(mock, inputs)

    body = assert_hubspot_error(response, 400, "VALIDATION_ERROR")
    assert "INVALID_EMAIL" in body["message"]
    [error] = body["errors"]
    assert error["code"] == "INVALID_EMAIL"
    assert error["in"] == "email"
    assert error["context"] == {"index": ["1"], "id": ["2"], "propertyName": ["email"]}
    assert await records(mock) == {}
    # Logged as received: one entry per input, each with the call's 400.
    assert await face_log(mock) == [(UPSERT, 400, "1"), (UPSERT, 400, "2"), (UPSERT, 400, "3")]


@pytest.mark.parametrize(
    ("inputs", "code"),
    [
        ([contact("1", company="ACME")], "PROPERTY_DOESNT_EXIST"),
        ([contact("1", hs_object_id="7")], "READ_ONLY_VALUE"),
        ([{**contact("1"), "idProperty": "email"}], "INVALID_ID_PROPERTY"),
        ([{"idProperty": ID_PROPERTY, "properties": {}}], "MISSING_ID"),
        ([contact("1", firstname="x" * 101)], "INVALID_LENGTH"),
    ],
    ids=["unknown", "read-only", "standard-id-property", "no-id", "too-long"],
)
async def test_inputs_hubspot_refuses_refuse_the_whole_batch(
    mock: Mock, inputs: list[dict[str, Any]], code: str
) -> None:
    response = await upsert(mock, [contact("0"), *inputs])

    body = assert_hubspot_error(response, 400, "VALIDATION_ERROR")
    assert [e["code"] for e in body["errors"]] == [code]
    assert body["errors"][0]["context"]["index"] == ["1"]
    assert await records(mock) == {}


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": []},
        {"inputs": [contact(str(n)) for n in range(101)]},
        {"inputs": "no"},
        [contact("1")],
    ],
    ids=["none", "101", "not-a-list", "bare-list"],
)
async def test_a_body_that_is_no_batch_answers_400(mock: Mock, body: Any) -> None:
    response = await mock.http.post(UPSERT, json=body)

    assert_hubspot_error(response, 400, "VALIDATION_ERROR")
    assert await records(mock) == {}
    assert await face_log(mock) == [(UPSERT, 400, None)]


async def test_a_repeated_id_refuses_the_batch(mock: Mock) -> None:
    response = await upsert(mock, [contact("1"), contact("2"), contact("1")])

    body = assert_hubspot_error(response, 400, "VALIDATION_ERROR")
    assert "Duplicate IDs" in body["message"]
    assert body["context"] == {"ids": ["1"]}


async def test_100_inputs_are_taken(mock: Mock) -> None:
    response = await upsert(mock, [contact(str(n)) for n in range(100)])

    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 100
    assert len(await records(mock)) == 100


async def test_a_record_the_mock_api_rewrote_shows_its_address_as_the_street(mock: Mock) -> None:
    [made] = (await upsert(mock, [contact("1")])).json()["results"]
    own = (await records(mock))["1"]
    rewritten = {**{k: own[k] for k in ("externalId", "firstName", "lastName", "email")}}
    rewritten["address"] = "1 Rue de Rivoli, Paris"
    assert (await mock.http.put(f"{CUSTOMERS}/{made['id']}", json=rewritten)).status_code == 200

    page = (await mock.http.get(CONTACTS, params={"properties": "address,city,zip"})).json()

    assert page["results"][0]["properties"] | {"createdate": None, "lastmodifieddate": None} == {
        "address": "1 Rue de Rivoli, Paris",
        "city": None,
        "zip": None,
        "hs_object_id": made["id"],
        "createdate": None,
        "lastmodifieddate": None,
    }
    # A HubSpot update of one part starts from that: the address is rewritten in parts.
    await upsert(mock, [{"id": "1", "idProperty": ID_PROPERTY, "properties": {"city": "Lyon"}}])
    assert (await records(mock))["1"]["address"] == "1 Rue de Rivoli, Paris, Lyon"


async def test_clearing_properties_empties_them(mock: Mock) -> None:
    await upsert(mock, [contact("1")])

    [result] = (
        await upsert(
            mock,
            [{"id": "1", "idProperty": ID_PROPERTY, "properties": {"phone": "", "zip": None}}],
        )
    ).json()["results"]

    assert (result["properties"]["phone"], result["properties"]["zip"]) == (None, None)
    own = (await records(mock))["1"]
    assert (own["phone"], own["address"]) == (None, "12 St James's Square, London, GB")


async def test_another_id_property_is_kept_and_shown(mock: Mock) -> None:
    inputs = [{**contact("7"), "idProperty": "customer_key"}]

    [result] = (await upsert(mock, inputs)).json()["results"]

    assert result["properties"]["customer_key"] == "7"
    assert ID_PROPERTY not in result["properties"]
    page = (await mock.http.get(CONTACTS, params={"properties": "customer_key"})).json()
    assert page["results"][0]["properties"]["customer_key"] == "7"


# --- faults, limits and credentials ----------------------------------------------------


async def test_error_rate_fails_the_records_it_draws_with_207(mock: Mock) -> None:
    await set_faults(mock, errorRate=0.5, statusCode=503)
    mock.runtime.rng = Draws([0.1, 0.9, 0.4, 0.6])

    response = await upsert(mock, [contact(str(n)) for n in range(4)])

    assert response.status_code == 207, response.text
    body = response.json()
    assert body["status"] == "COMPLETE"
    assert body["numErrors"] == 2
    assert [r["properties"][ID_PROPERTY] for r in body["results"]] == ["1", "3"]
    assert [(e["context"]["ids"], e["context"]["statusCode"]) for e in body["errors"]] == [
        (["0"], ["503"]),
        (["2"], ["503"]),
    ]
    assert all(e["status"] == "error" and e["links"] == {} for e in body["errors"])
    assert sorted(await records(mock)) == ["1", "3"]
    assert await face_log(mock) == [
        (UPSERT, 503, "0"),
        (UPSERT, 201, "1"),
        (UPSERT, 503, "2"),
        (UPSERT, 201, "3"),
    ]


async def test_error_rate_fails_archived_ids_one_by_one(mock: Mock) -> None:
    results = (await upsert(mock, [contact("1"), contact("2")])).json()["results"]
    ids = [r["id"] for r in results]
    await set_faults(mock, errorRate=0.5, statusCode=500)
    mock.runtime.rng = Draws([0.9, 0.1, 0.9])

    response = await mock.http.post(
        ARCHIVE, json={"inputs": [{"id": ids[0]}, {"id": ids[1]}, {"id": "crm_none"}]}
    )

    assert response.status_code == 207, response.text
    assert [e["context"]["ids"] for e in response.json()["errors"]] == [[ids[1]]]
    await set_faults(mock, errorRate=0.0)
    assert sorted(await records(mock)) == ["2"]
    assert [entry for entry in await face_log(mock) if entry[0] == ARCHIVE] == [
        (ARCHIVE, 204, "1"),
        (ARCHIVE, 500, "2"),
        (ARCHIVE, 404, None),
    ]


async def test_archive_of_unknown_ids_answers_204(mock: Mock) -> None:
    response = await mock.http.post(ARCHIVE, json={"inputs": [{"id": "crm_none"}]})

    assert response.status_code == 204
    assert response.content == b""


async def test_down_answers_the_status_code_in_hubspot_words(mock: Mock) -> None:
    await set_faults(mock, down=True, statusCode=503, retryAfterSeconds=30)

    response = await upsert(mock, [contact("1"), contact("2")])

    body = assert_hubspot_error(response, 503, "INTERNAL_ERROR")
    assert body["message"] == "fault injected: the CRM is down"
    assert response.headers["retry-after"] == "30"
    assert all(response.headers.get(name) for name in RATE_HEADERS)
    await set_faults(mock, down=False)
    assert await records(mock) == {}
    assert await face_log(mock) == [(UPSERT, 503, "1"), (UPSERT, 503, "2")]


async def test_past_the_rate_limit_a_call_answers_429_ten_secondly_rolling(mock: Mock) -> None:
    mock.runtime.rate_window = OneSecond()
    await set_faults(mock, rateLimitPerSecond=2, retryAfterSeconds=3)

    first = await mock.http.get(CONTACTS)
    second = await upsert(mock, [contact("1"), contact("2")])
    third = await upsert(mock, [contact("3")])

    assert (first.status_code, second.status_code) == (200, 200)
    assert (
        first.headers["x-hubspot-ratelimit-max"],
        first.headers["x-hubspot-ratelimit-remaining"],
    ) == ("2", "1")
    assert second.headers["x-hubspot-ratelimit-remaining"] == "0"
    assert third.status_code == 429
    body = third.json()
    assert (body["status"], body["errorType"], body["policyName"]) == (
        "error",
        "RATE_LIMIT",
        "TEN_SECONDLY_ROLLING",
    )
    assert body["correlationId"] and body["message"]
    assert third.headers["retry-after"] == "3"
    assert third.headers["x-hubspot-ratelimit-interval-milliseconds"] == "1000"
    assert (
        third.headers["x-hubspot-ratelimit-max"],
        third.headers["x-hubspot-ratelimit-remaining"],
    ) == ("2", "0")
    await set_faults(mock, rateLimitPerSecond=None)
    assert sorted(await records(mock)) == ["1", "2"]
    assert (await face_log(mock))[-1] == (UPSERT, 429, "3")


async def test_past_the_daily_limit_a_call_answers_429_daily(mock: Mock) -> None:
    await set_faults(mock, dailyLimit=2)
    shown = (await mock.http.get(FAULTS)).json()

    first = await upsert(mock, [contact("1")])
    second = await mock.http.get(CONTACTS)
    third = await upsert(mock, [contact("2")])

    assert shown["dailyLimit"] == 2
    assert (first.status_code, second.status_code) == (200, 200)
    assert [r.headers["x-hubspot-ratelimit-daily"] for r in (first, second, third)] == ["2"] * 3
    assert [r.headers["x-hubspot-ratelimit-daily-remaining"] for r in (first, second, third)] == [
        "1",
        "0",
        "0",
    ]
    assert third.status_code == 429
    body = third.json()
    assert (body["errorType"], body["policyName"]) == ("RATE_LIMIT", "DAILY")
    assert 0 < int(third.headers["retry-after"]) <= 86_400
    assert sorted(await records(mock)) == ["1"]
    # Lifted, the calls go through again; the switch shows no daily limit.
    await set_faults(mock, dailyLimit=None)
    assert (await upsert(mock, [contact("2")])).status_code == 200
    assert "dailyLimit" not in (await mock.http.get(FAULTS)).json()


async def test_without_limits_the_headers_say_so(mock: Mock) -> None:
    response = await mock.http.get(CONTACTS)

    assert response.status_code == 200
    assert response.json() == {"results": []}
    assert response.headers["x-hubspot-ratelimit-interval-milliseconds"] == "1000"
    assert response.headers["x-hubspot-ratelimit-max"] == "1000000000"
    assert int(response.headers["x-hubspot-ratelimit-remaining"]) >= 999_999_990
    assert response.headers["x-hubspot-ratelimit-daily"] == "1000000000"
    assert response.headers["x-hubspot-ratelimit-daily-remaining"] == "999999999"


async def test_a_wrong_or_missing_token_answers_401_in_hubspot_words(start: StartMock) -> None:
    async with start(api_token="pat-na1-s3cret") as mock:
        missing = await upsert(mock, [contact("1")])
        wrong = await upsert(mock, [contact("1")], Authorization="Bearer guess")
        allowed = await upsert(mock, [contact("1")], Authorization="Bearer pat-na1-s3cret")
        with pytest.raises(ApiException) as refused:
            await asyncio.to_thread(client_of(mock, "guess").crm.contacts.basic_api.get_page)
        listed = await asyncio.to_thread(
            client_of(mock, "pat-na1-s3cret").crm.contacts.basic_api.get_page
        )
        entries = await face_log(mock)

    for answer in (missing, wrong):
        assert_hubspot_error(answer, 401, "INVALID_AUTHENTICATION")
        assert all(answer.headers.get(name) for name in RATE_HEADERS)
    assert refused.value.status == 401
    assert allowed.status_code == 200
    assert [r.id for r in listed.results] == [allowed.json()["results"][0]["id"]]
    assert entries[:3] == [(UPSERT, 401, "1"), (UPSERT, 401, "1"), (UPSERT, 201, "1")]


async def test_each_record_is_its_own_log_entry_with_its_body(mock: Mock) -> None:
    inputs = [contact("1"), contact("2")]
    await upsert(mock, inputs)
    await upsert(mock, [contact("1", city="Bath")])

    items = (await mock.http.get(REQUESTS, params={"externalId": "1"})).json()["items"]

    assert [(e["method"], e["path"], e["status"]) for e in items] == [
        ("POST", UPSERT, 201),
        ("POST", UPSERT, 200),
    ]
    assert items[0]["body"] == inputs[0]
    assert items[0]["idempotencyKey"] is None


async def test_list_refuses_a_limit_over_100(mock: Mock) -> None:
    response = await mock.http.get(CONTACTS, params={"limit": 101})

    assert_hubspot_error(response, 400, "VALIDATION_ERROR")


async def test_the_faces_stay_out_of_the_mock_openapi_document(mock: Mock) -> None:
    paths = (await mock.http.get("/openapi.json")).json()["paths"]

    assert not [path for path in paths if path.startswith("/crm/")]


async def test_latency_delays_a_batch_once(mock: Mock) -> None:
    await set_faults(mock, latencyMs=300)

    started = asyncio.get_running_loop().time()
    response = await upsert(mock, [contact(str(n)) for n in range(20)])
    elapsed = asyncio.get_running_loop().time() - started

    assert response.status_code == 200
    assert 0.3 <= elapsed < 2.0  # not 6 s: a delay a record
