"""The CRM mock's Salesforce face (`crm_mock.salesforce`), on a live server on loopback.

The server speaks TLS (a private CA made with trustme), because Salesforce's own Python
client, `simple-salesforce`, only speaks https: given the `instance_url` and token the
mock's OAuth endpoint answers, it upserts a Contact by external id, reads it back, sends
an sObject Collections upsert and runs `query_all`, and parses every answer itself: the
proof that the face answers in Salesforce's shapes. Plain HTTP then checks what the
client hides: a collection with bad records, the collections delete, `INVALID_SESSION_ID`,
`REQUEST_LIMIT_EXCEEDED`, `UNABLE_TO_LOCK_ROW`, paging with `nextRecordsUrl`, and one
request-log entry per record.
"""

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import trustme
import uvicorn
from fastapi import FastAPI
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
)
from support import eventually, free_port, loopback_client

from crm_mock.app import create_app
from crm_mock.config import CrmSettings
from crm_mock.deps import CrmRuntime
from crm_mock.faults import RateWindow

VERSION = "v62.0"
DATA = f"/services/data/{VERSION}"
TOKEN = "/services/oauth2/token"
EXTERNAL_ID = "Crm_Sync_Id__c"
COLLECTION = f"{DATA}/composite/sobjects/Contact/{EXTERNAL_ID}"
DELETE = f"{DATA}/composite/sobjects"
QUERY = f"{DATA}/query"
EXPIRE = "/api/crm/_salesforce/expire-tokens"
CUSTOMERS = "/api/crm/customers"
FAULTS = "/api/crm/_faults"
REQUESTS = "/api/crm/_requests"
SECRET = "s3cret-client-secret"
FIELDS = "Id, FirstName, LastName, Email, Phone, MailingStreet, MailingCity, MailingPostalCode"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class Mock:
    url: str
    app: FastAPI
    http: httpx.AsyncClient
    ca_file: Path
    sessions: list[requests.Session] = field(default_factory=list)

    @property
    def runtime(self) -> CrmRuntime:
        runtime: CrmRuntime = self.app.state.runtime
        return runtime

    async def token(self, secret: str = SECRET) -> dict[str, Any]:
        response = await self.http.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": "3MVG9-mock",
                "client_secret": secret,
            },
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def authorized(self, secret: str = SECRET) -> dict[str, str]:
        return {"Authorization": f"Bearer {(await self.token(secret))['access_token']}"}

    def client(self, token: dict[str, Any]) -> Salesforce:
        """Salesforce's official client on the token's instance, trusting the test CA."""
        session = requests.Session()
        session.verify = str(self.ca_file)
        session.trust_env = False  # no proxy from the environment
        self.sessions.append(session)
        return Salesforce(
            instance_url=token["instance_url"],
            session_id=token["access_token"],
            session=session,
            version=VERSION[1:],
        )


StartMock = Callable[..., AbstractAsyncContextManager[Mock]]


@pytest.fixture
def start(crm_database_url: str, ca: trustme.CA, tmp_path: Path) -> StartMock:
    """Start the CRM mock as a real HTTPS server on loopback (optionally with a token)."""
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = (tmp_path / n for n in ("crm.pem", "crm.key", "ca.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context()
    ca.configure_trust(context)

    @asynccontextmanager
    async def started(api_token: str = "") -> AsyncIterator[Mock]:
        settings = CrmSettings(
            _env_file=None, crm_database_url=crm_database_url, crm_api_token=api_token
        )
        app = create_app(settings)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                ssl_certfile=str(cert_file),
                ssl_keyfile=str(key_file),
                timeout_graceful_shutdown=1,
            )
        )
        task = asyncio.create_task(server.serve())
        try:
            await eventually(lambda: asyncio.sleep(0, server.started))
            url = f"https://127.0.0.1:{port}"
            async with loopback_client(url, timeout=30, verify=context, trust_env=False) as http:
                running = Mock(url, app, http, ca_file)
                try:
                    yield running
                finally:
                    for session in running.sessions:
                        session.close()
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=10)

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


def contact(external_id: str, **overrides: Any) -> dict[str, Any]:
    """A Contact record of a collection, for the customer `external_id`."""
    record: dict[str, Any] = {
        "attributes": {"type": "Contact"},
        EXTERNAL_ID: external_id,
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "Email": f"ada{external_id}@example.com",
        "Phone": "+44 20 7946 0000",
        "MailingStreet": "12 St James's Square",
        "MailingCity": "London",
        "MailingPostalCode": "SW1Y 4JH",
        "MailingCountry": "GB",
    }
    record.update(overrides)
    return record


async def upsert(
    mock: Mock, records: list[Any], headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    return await mock.http.patch(
        COLLECTION, json={"allOrNone": False, "records": records, **body}, headers=headers
    )


async def set_faults(mock: Mock, **settings: Any) -> None:
    response = await mock.http.put(FAULTS, json=settings)
    assert response.status_code == 200, response.text


async def records(mock: Mock, api_token: str = "") -> dict[str, dict[str, Any]]:
    """The mock's own view of every record, by externalId."""
    headers = {"Authorization": f"Bearer {api_token}"} if api_token else None
    response = await mock.http.get(CUSTOMERS, params={"limit": 1000}, headers=headers)
    assert response.status_code == 200
    return {record["externalId"]: record for record in response.json()["items"]}


async def face_log(mock: Mock) -> list[tuple[str, str, int, str | None]]:
    """The request log's Salesforce entries: (method, path, status, externalId)."""
    items = (await mock.http.get(REQUESTS)).json()["items"]
    return [
        (e["method"], e["path"], e["status"], e["externalId"])
        for e in items
        if e["path"].startswith("/services/")
    ]


def assert_sf_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    [error] = response.json()
    assert error["errorCode"] == code
    assert error["message"]
    assert isinstance(error, dict)
    return error


# --- the official client ---------------------------------------------------------------


async def test_the_official_client_upserts_reads_and_queries(mock: Mock) -> None:
    token = await mock.token()
    assert token["instance_url"] == mock.url
    assert token["token_type"] == "Bearer"
    assert token["issued_at"].isdigit() and token["signature"] and token["id"]
    sf = mock.client(token)
    fields = {k: v for k, v in contact("42").items() if k not in ("attributes", EXTERNAL_ID)}

    created = await asyncio.to_thread(sf.Contact.upsert, f"{EXTERNAL_ID}/42", fields)
    updated = await asyncio.to_thread(
        sf.Contact.upsert, f"{EXTERNAL_ID}/42", {"MailingCity": "Paris", "FirstName": "Augusta"}
    )
    read = await asyncio.to_thread(sf.Contact.get_by_custom_id, EXTERNAL_ID, "42")

    assert (created, updated) == (201, 204)
    assert read["attributes"]["type"] == "Contact"
    assert (read["FirstName"], read["LastName"], read["MailingCity"]) == (
        "Augusta",
        "Lovelace",
        "Paris",
    )
    assert read[EXTERNAL_ID] == "42"
    own = (await records(mock))["42"]
    assert own["id"] == read["Id"]
    assert own["address"] == "12 St James's Square, Paris, SW1Y 4JH, GB"

    # A collections upsert through the client's own REST call: one result per record.
    results = await asyncio.to_thread(
        sf.restful,
        f"composite/sobjects/Contact/{EXTERNAL_ID}",
        method="PATCH",
        json={"allOrNone": False, "records": [contact("42", Phone=None), contact("43")]},
    )
    assert [(r["success"], r["created"], r["errors"]) for r in results] == [
        (True, False, []),
        (True, True, []),
    ]
    assert results[0]["id"] == own["id"]

    answer = await asyncio.to_thread(
        sf.query_all, f"SELECT {FIELDS}, {EXTERNAL_ID} FROM Contact ORDER BY Id"
    )
    assert (answer["totalSize"], answer["done"]) == (2, True)
    by_external = {r[EXTERNAL_ID]: r for r in answer["records"]}
    assert set(by_external) == {"42", "43"}
    assert by_external["42"]["Phone"] is None
    assert by_external["42"]["MailingStreet"] == "12 St James's Square"
    assert by_external["43"]["attributes"]["url"] == f"{DATA}/sobjects/Contact/{results[1]['id']}"
    assert [r["Id"] for r in answer["records"]] == sorted(r["Id"] for r in answer["records"])


class OrgSession(requests.Session):
    """A requests session that takes the org's My Domain host to the mock (the official
    client builds its token URL from a domain of salesforce.com)."""

    def __init__(self, org: str, url: str) -> None:
        super().__init__()
        self.org, self.url = org, url

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        target = url.decode() if isinstance(url, bytes) else url
        return super().request(method, target.replace(self.org, self.url), *args, **kwargs)


async def test_the_official_client_logs_in_with_client_credentials_and_upserts(
    start: StartMock,
) -> None:
    async with start(SECRET) as mock:
        session = OrgSession("https://mock-org.my.salesforce.com", mock.url)
        session.verify = str(mock.ca_file)
        session.trust_env = False
        mock.sessions.append(session)

        def login(secret: str) -> Salesforce:
            return Salesforce(
                consumer_key="3MVG9-mock",
                consumer_secret=secret,
                domain="mock-org.my",
                session=session,
                version=VERSION[1:],
            )

        # The client's own token login (client credentials, HTTP Basic), its answer parsed
        # by the client: a wrong secret is refused in OAuth's words.
        with pytest.raises(SalesforceAuthenticationFailed, match="invalid_client"):
            await asyncio.to_thread(login, "not-the-secret")
        sf = await asyncio.to_thread(login, SECRET)
        assert sf.sf_instance == mock.url.removeprefix("https://")
        fields = {k: v for k, v in contact("7").items() if k not in ("attributes", EXTERNAL_ID)}

        created = await asyncio.to_thread(sf.Contact.upsert, f"{EXTERNAL_ID}/7", fields)
        updated = await asyncio.to_thread(sf.Contact.upsert, f"{EXTERNAL_ID}/7", {"LastName": "B"})
        answer = await asyncio.to_thread(
            sf.query_all, f"SELECT Id, LastName, {EXTERNAL_ID} FROM Contact"
        )

    assert (created, updated) == (201, 204)
    assert answer["totalSize"] == 1
    [record] = answer["records"]
    assert (record["LastName"], record[EXTERNAL_ID]) == ("B", "7")


async def test_the_official_client_follows_next_records_url(mock: Mock) -> None:
    headers = await mock.authorized()
    for first in (0, 200):
        batch = [contact(str(n)) for n in range(first, first + 200)][: 250 - first]
        response = await upsert(mock, batch, headers)
        assert response.status_code == 200
        assert all(r["success"] for r in response.json())
    sf = mock.client(await mock.token())

    answer = await asyncio.to_thread(
        sf.query_all,
        f"SELECT Id, {EXTERNAL_ID} FROM Contact",
        headers={"Sforce-Query-Options": "batchSize=200"},
    )

    assert (answer["totalSize"], answer["done"]) == (250, True)
    assert sorted(int(r[EXTERNAL_ID]) for r in answer["records"]) == list(range(250))
    pages = [e for e in await face_log(mock) if e[0] == "GET"]
    assert [path.startswith(f"{QUERY}/01g") for _, path, _, _ in pages] == [False, True]


async def test_the_official_client_sees_an_expired_session(mock: Mock) -> None:
    sf = mock.client(await mock.token())
    assert (await asyncio.to_thread(sf.query, "SELECT Id FROM Contact"))["totalSize"] == 0

    expired = await mock.http.post(EXPIRE)

    assert expired.json() == {"expired": 1}
    with pytest.raises(SalesforceExpiredSession):
        await asyncio.to_thread(sf.query, "SELECT Id FROM Contact")
    fresh = mock.client(await mock.token())
    assert (await asyncio.to_thread(fresh.query, "SELECT Id FROM Contact"))["done"] is True


# --- token -----------------------------------------------------------------------------


async def test_a_wrong_secret_answers_invalid_client(start: StartMock) -> None:
    async with start(api_token=SECRET) as mock:
        wrong = await mock.http.post(
            TOKEN,
            data={"grant_type": "client_credentials", "client_id": "x", "client_secret": "guess"},
        )
        other_grant = await mock.http.post(TOKEN, data={"grant_type": "password", "client_id": "x"})
        no_client = await mock.http.post(TOKEN, data={"grant_type": "client_credentials"})
        basic = await mock.http.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=("3MVG9-mock", SECRET)
        )
        right = await mock.token()

    assert (wrong.status_code, wrong.json()) == (
        400,
        {"error": "invalid_client", "error_description": "invalid client credentials"},
    )
    assert (other_grant.status_code, other_grant.json()["error"]) == (400, "unsupported_grant_type")
    assert (no_client.status_code, no_client.json()["error"]) == (400, "invalid_client_id")
    assert basic.status_code == 200
    assert right["access_token"] != basic.json()["access_token"]


async def test_with_a_token_set_every_data_call_needs_a_live_session(start: StartMock) -> None:
    async with start(api_token=SECRET) as mock:
        missing = await mock.http.get(QUERY, params={"q": "SELECT Id FROM Contact"})
        made_up = await upsert(mock, [contact("1")], {"Authorization": "Bearer 00Dmadeup"})
        raw_secret = await upsert(mock, [contact("1")], {"Authorization": f"Bearer {SECRET}"})
        headers = await mock.authorized()
        allowed = await upsert(mock, [contact("1")], headers)
        await mock.http.post(EXPIRE)
        expired = await upsert(mock, [contact("2")], headers)
        with pytest.raises(SalesforceExpiredSession):
            sf = mock.client({"instance_url": mock.url, "access_token": "00Dmadeup"})
            await asyncio.to_thread(sf.query, "SELECT Id FROM Contact")
        entries = await face_log(mock)
        own = await records(mock, api_token=SECRET)

    for answer in (missing, made_up, raw_secret, expired):
        assert_sf_error(answer, 401, "INVALID_SESSION_ID")
    assert allowed.status_code == 200
    assert sorted(own) == ["1"]
    assert [(status, ext) for method, _, status, ext in entries if method == "PATCH"] == [
        (401, "1"),
        (401, "1"),
        (201, "1"),
        (401, "2"),
    ]


# --- collections upsert ----------------------------------------------------------------


async def test_bad_records_fail_alone_and_the_others_are_applied(mock: Mock) -> None:
    await upsert(mock, [contact("9")])
    sent = [
        contact("1"),
        contact("2", LastName=None),
        {k: v for k, v in contact("3").items() if k != "LastName"},
        contact("4", Email="ada@nowhere"),
        contact("5", FirstName="x" * 41),
        contact("1", FirstName="Again"),
        {k: v for k, v in contact("7").items() if k != EXTERNAL_ID},
        {"attributes": {"type": "Contact"}, EXTERNAL_ID: "9", "MailingCity": "Bath"},
    ]

    response = await upsert(mock, sent)

    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["success"] for r in results] == [True, False, False, False, False, False, False, True]
    codes = [[e["statusCode"] for e in r["errors"]] for r in results]
    assert codes == [
        [],
        ["REQUIRED_FIELD_MISSING"],
        ["REQUIRED_FIELD_MISSING"],
        ["INVALID_EMAIL_ADDRESS"],
        ["STRING_TOO_LONG"],
        ["DUPLICATE_VALUE"],
        ["MISSING_ARGUMENT"],
        [],
    ]
    assert results[1]["errors"][0]["fields"] == ["LastName"]
    assert results[3]["errors"][0]["fields"] == ["Email"]
    assert results[4]["errors"][0]["fields"] == ["FirstName"]
    assert [(r["created"], r["id"] is not None) for r in (results[0], results[7])] == [
        (True, True),
        (False, True),
    ]
    own = await records(mock)
    assert sorted(own) == ["1", "9"]
    # An update sends only what changes: the last name stays.
    assert (own["9"]["lastName"], own["9"]["address"]) == (
        "Lovelace",
        "12 St James's Square, Bath, SW1Y 4JH, GB",
    )
    assert [(status, ext) for method, _, status, ext in await face_log(mock)][1:] == [
        (201, "1"),
        (400, "2"),
        (400, "3"),
        (400, "4"),
        (400, "5"),
        (400, "1"),
        (400, None),
        (200, "9"),
    ]


async def test_all_or_none_applies_nothing_when_one_fails(mock: Mock) -> None:
    response = await upsert(mock, [contact("1"), contact("2", Email="bad")], allOrNone=True)

    assert response.status_code == 200
    codes = [[e["statusCode"] for e in r["errors"]] for r in response.json()]
    assert codes == [["ALL_OR_NONE_OPERATION_ROLLED_BACK"], ["INVALID_EMAIL_ADDRESS"]]
    assert await records(mock) == {}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"records": [contact(str(n)) for n in range(201)]}, "EXCEEDED_ID_LIMIT"),
        ({"records": [contact("1", Company="ACME")]}, "INVALID_FIELD"),
        ({"records": [contact("1", Id="crm_1")]}, "INVALID_FIELD"),
        ({"records": [contact("1", attributes={"type": "Account"})]}, "INVALID_TYPE"),
        ({"records": "no"}, "JSON_PARSER_ERROR"),
    ],
    ids=["201", "unknown-field", "id", "not-a-contact", "not-a-list"],
)
async def test_a_collection_salesforce_refuses_whole_answers_400(
    mock: Mock, body: dict[str, Any], code: str
) -> None:
    response = await mock.http.patch(COLLECTION, json=body)

    assert_sf_error(response, 400, code)
    assert await records(mock) == {}


async def test_200_records_are_taken(mock: Mock) -> None:
    response = await upsert(mock, [contact(str(n)) for n in range(200)])

    assert response.status_code == 200
    assert all(result["created"] for result in response.json())
    assert len(await records(mock)) == 200


async def test_error_rate_fails_the_records_it_draws_with_unable_to_lock_row(mock: Mock) -> None:
    await set_faults(mock, errorRate=0.5, statusCode=503)
    mock.runtime.rng = Draws([0.1, 0.9, 0.4])

    response = await upsert(mock, [contact("0"), contact("1"), contact("2")])

    assert response.status_code == 200
    results = response.json()
    assert [r["success"] for r in results] == [False, True, False]
    assert {e["statusCode"] for r in (results[0], results[2]) for e in r["errors"]} == {
        "UNABLE_TO_LOCK_ROW"
    }
    await set_faults(mock, errorRate=0.0)
    assert sorted(await records(mock)) == ["1"]
    assert [(status, ext) for _, _, status, ext in await face_log(mock)] == [
        (503, "0"),
        (201, "1"),
        (503, "2"),
    ]


# --- delete ----------------------------------------------------------------------------


async def test_the_collections_delete_answers_one_result_per_id(mock: Mock) -> None:
    made = (await upsert(mock, [contact("1"), contact("2"), contact("3")])).json()
    ids = [result["id"] for result in made]
    await set_faults(mock, errorRate=0.5, statusCode=500)
    mock.runtime.rng = Draws([0.9, 0.1, 0.9])

    response = await mock.http.delete(
        DELETE, params={"ids": f"{ids[0]},{ids[1]},crm_none", "allOrNone": "false"}
    )

    assert response.status_code == 200, response.text
    results = response.json()
    assert [(r["id"], r["success"]) for r in results] == [
        (ids[0], True),
        (ids[1], False),
        ("crm_none", False),
    ]
    assert [[e["statusCode"] for e in r["errors"]] for r in results] == [
        [],
        ["UNABLE_TO_LOCK_ROW"],
        ["ENTITY_IS_DELETED"],
    ]
    await set_faults(mock, errorRate=0.0)
    assert sorted(await records(mock)) == ["2", "3"]
    deletes = [
        (status, ext) for method, _, status, ext in await face_log(mock) if method == "DELETE"
    ]
    assert deletes == [(204, "1"), (500, "2"), (404, None)]


async def test_a_delete_of_more_than_200_ids_answers_400(mock: Mock) -> None:
    ids = ",".join(f"crm_{n}" for n in range(201))

    response = await mock.http.delete(DELETE, params={"ids": ids})

    assert_sf_error(response, 400, "EXCEEDED_ID_LIMIT")


# --- limits and faults -----------------------------------------------------------------


async def test_past_the_daily_limit_calls_answer_request_limit_exceeded(mock: Mock) -> None:
    await set_faults(mock, dailyLimit=2)

    first = await upsert(mock, [contact("1")])
    second = await mock.http.get(QUERY, params={"q": "SELECT Id FROM Contact"})
    third = await upsert(mock, [contact("2")])

    assert (first.status_code, second.status_code) == (200, 200)
    assert [r.headers["sforce-limit-info"] for r in (first, second, third)] == [
        "api-usage=1/2",
        "api-usage=2/2",
        "api-usage=2/2",
    ]
    error = assert_sf_error(third, 403, "REQUEST_LIMIT_EXCEEDED")
    assert "TotalRequests" in error["message"]
    assert 0 < int(third.headers["retry-after"]) <= 86_400
    assert sorted(await records(mock)) == ["1"]
    await set_faults(mock, dailyLimit=None)
    assert (await upsert(mock, [contact("2")])).status_code == 200


async def test_the_client_sees_request_limit_exceeded_as_a_refusal(mock: Mock) -> None:
    sf = mock.client(await mock.token())
    await set_faults(mock, dailyLimit=1)
    await asyncio.to_thread(sf.query, "SELECT Id FROM Contact")

    with pytest.raises(SalesforceRefusedRequest):
        await asyncio.to_thread(sf.query, "SELECT Id FROM Contact")


async def test_down_answers_the_status_code_in_salesforce_words(mock: Mock) -> None:
    await set_faults(mock, down=True, statusCode=503, retryAfterSeconds=7)

    upserted = await upsert(mock, [contact("1"), contact("2")])
    token = await mock.http.post(TOKEN, data={"grant_type": "client_credentials", "client_id": "x"})

    error = assert_sf_error(upserted, 503, "SERVER_UNAVAILABLE")
    assert error["message"] == "fault injected: the CRM is down"
    assert upserted.headers["retry-after"] == "7"
    assert (token.status_code, token.json()["error"]) == (503, "temporarily_unavailable")
    await set_faults(mock, down=False)
    assert await records(mock) == {}
    assert [(status, ext) for _, _, status, ext in await face_log(mock)] == [
        (503, "1"),
        (503, "2"),
        (503, None),
    ]


# --- query -----------------------------------------------------------------------------


async def test_paging_follows_next_records_url_to_the_end(mock: Mock) -> None:
    for first in (0, 200):
        await upsert(mock, [contact(str(n)) for n in range(first, min(first + 200, 230))])
    options = {"Sforce-Query-Options": "batchSize=200"}

    page = (
        await mock.http.get(
            QUERY, params={"q": f"SELECT Id, {EXTERNAL_ID} FROM Contact"}, headers=options
        )
    ).json()
    second = (await mock.http.get(page["nextRecordsUrl"])).json()
    replayed = await mock.http.get(page["nextRecordsUrl"])

    assert (page["totalSize"], page["done"], len(page["records"])) == (230, False, 200)
    assert page["nextRecordsUrl"].startswith(f"{QUERY}/01g")
    assert (second["totalSize"], second["done"], len(second["records"])) == (230, True, 30)
    assert "nextRecordsUrl" not in second
    ids = [r["Id"] for r in page["records"] + second["records"]]
    assert ids == sorted(set(ids))
    assert_sf_error(replayed, 400, "INVALID_QUERY_LOCATOR")


async def test_where_in_and_limit(mock: Mock) -> None:
    await upsert(mock, [contact(str(n)) for n in range(5)])

    some = await mock.http.get(
        QUERY,
        params={"q": f"select Id, lastname from Contact where {EXTERNAL_ID} in ('1', '3', '9')"},
    )
    one = await mock.http.get(
        QUERY, params={"q": f"SELECT {EXTERNAL_ID} FROM Contact WHERE {EXTERNAL_ID} = '4'"}
    )
    limited = await mock.http.get(QUERY, params={"q": "SELECT Id FROM Contact LIMIT 2"})

    assert some.status_code == 200, some.text
    assert some.json()["totalSize"] == 2
    assert {r["LastName"] for r in some.json()["records"]} == {"Lovelace"}
    assert [r[EXTERNAL_ID] for r in one.json()["records"]] == ["4"]
    assert (limited.json()["totalSize"], len(limited.json()["records"])) == (2, 2)


@pytest.mark.parametrize(
    ("soql", "code"),
    [
        ("SELECT Id FROM Account", "INVALID_TYPE"),
        ("SELECT Id, Nickname FROM Contact", "INVALID_FIELD"),
        ("SELECT Id FROM Contact WHERE Email LIKE '%a%'", "MALFORMED_QUERY"),
        ("DELETE FROM Contact", "MALFORMED_QUERY"),
    ],
)
async def test_queries_the_mock_cannot_run_answer_400(mock: Mock, soql: str, code: str) -> None:
    response = await mock.http.get(QUERY, params={"q": soql})

    assert_sf_error(response, 400, code)


async def test_the_client_sees_a_malformed_query(mock: Mock) -> None:
    sf = mock.client(await mock.token())

    with pytest.raises(SalesforceMalformedRequest):
        await asyncio.to_thread(sf.query, "SELECT Id FROM Opportunity")


async def test_past_the_rate_limit_calls_answer_request_limit_exceeded(mock: Mock) -> None:
    mock.runtime.rate_window = OneSecond()
    await set_faults(mock, rateLimitPerSecond=1, retryAfterSeconds=2)

    first = await upsert(mock, [contact("1")])
    second = await upsert(mock, [contact("2"), contact("3")])

    assert first.status_code == 200
    error = assert_sf_error(second, 403, "REQUEST_LIMIT_EXCEEDED")
    assert "ConcurrentRequests" in error["message"]
    assert second.headers["retry-after"] == "2"
    await set_faults(mock, rateLimitPerSecond=None)
    assert sorted(await records(mock)) == ["1"]
    assert [(status, ext) for _, _, status, ext in await face_log(mock)] == [
        (201, "1"),
        (403, "2"),
        (403, "3"),
    ]


async def test_latency_delays_a_collection_once(mock: Mock) -> None:
    await set_faults(mock, latencyMs=300)

    started = asyncio.get_running_loop().time()
    response = await upsert(mock, [contact(str(n)) for n in range(20)])
    elapsed = asyncio.get_running_loop().time() - started

    assert response.status_code == 200
    assert 0.3 <= elapsed < 2.0  # not 6 s: a delay a record
