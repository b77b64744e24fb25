"""The CRM mock's batch endpoints (`POST /api/crm/customers/batch` and `.../batch/delete`):
upsert by externalId, per-record failures (207), one request-log entry per record, and the
gateway's faults, rate limit, auth and idempotency acting on the call as a whole."""

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from crm_mock.app import create_app
from crm_mock.config import CrmSettings
from crm_mock.deps import CrmRuntime
from crm_mock.faults import RateWindow

CUSTOMERS = "/api/crm/customers"
BATCH = f"{CUSTOMERS}/batch"
BATCH_DELETE = f"{BATCH}/delete"
FAULTS = "/api/crm/_faults"
REQUESTS = "/api/crm/_requests"
PROBLEM_JSON = "application/problem+json"


@dataclass
class Crm:
    client: httpx.AsyncClient
    runtime: CrmRuntime


StartCrm = Callable[..., AbstractAsyncContextManager[Crm]]


@pytest.fixture
def start(crm_database_url: str) -> StartCrm:
    """Start a CRM mock (optionally with an API token); yields its client and runtime."""

    @asynccontextmanager
    async def started(api_token: str = "") -> AsyncIterator[Crm]:
        settings = CrmSettings(
            _env_file=None, crm_database_url=crm_database_url, crm_api_token=api_token
        )
        app = create_app(settings)
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://crm.test") as client:
                yield Crm(client, app.state.runtime)

    return started


@pytest.fixture
async def crm(start: StartCrm) -> AsyncIterator[Crm]:
    async with start() as running:
        yield running


class Draws(random.Random):
    """A stand-in for the runtime's random numbers: these draws in order, then 0.99."""

    def __init__(self, draws: Iterable[float]) -> None:
        super().__init__()
        self._draws = list(draws)

    def random(self) -> float:
        return self._draws.pop(0) if self._draws else 0.99


class OneSecond(RateWindow):
    """The rate window with every call in the same second, so a limit test cannot straddle
    two seconds."""

    def admit(self, now: float, limit: int | None) -> bool:
        return super().admit(0.0, limit)


def customer(external_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "externalId": external_id,
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": f"ada{external_id}@example.com",
        "phone": None,
        "address": "London, GB",
    }
    body.update(overrides)
    return body


async def set_faults(crm: Crm, **settings: Any) -> None:
    response = await crm.client.put(FAULTS, json=settings)
    assert response.status_code == 200, response.text


async def all_records(crm: Crm) -> list[dict[str, Any]]:
    """Every record, by externalId (records made by one call may share a timestamp, which
    leaves the CRM's own order to their random ids)."""
    response = await crm.client.get(CUSTOMERS, params={"limit": 1000})
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["items"]
    return sorted(items, key=lambda record: record["externalId"])


async def log(crm: Crm) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await crm.client.get(REQUESTS)).json()["items"]
    return items


async def batch_log(crm: Crm) -> list[tuple[str, str, int, str | None, str | None]]:
    """The request log's batch entries: (method, path, status, externalId, key)."""
    return [
        (e["method"], e["path"], e["status"], e["externalId"], e["idempotencyKey"])
        for e in await log(crm)
        if e["path"] in (BATCH, BATCH_DELETE)
    ]


async def upsert(crm: Crm, inputs: list[Any], **headers: str) -> httpx.Response:
    return await crm.client.post(BATCH, json={"inputs": inputs}, headers=headers)


def fields(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in customer("0")}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    return problem


# --- upsert --------------------------------------------------------------------------------


async def test_upsert_creates_unknown_and_replaces_known_records(crm: Crm) -> None:
    known = (await crm.client.post(CUSTOMERS, json=customer("1"))).json()
    inputs = [customer("2"), customer("1", firstName="Augusta", phone="+44 1"), customer("3")]

    response = await upsert(crm, inputs)

    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["results"]
    results = body["results"]
    assert [fields(record) for record in results] == inputs
    created, replaced, other = results
    assert replaced["id"] == known["id"]
    assert replaced["createdAt"] == known["createdAt"]
    assert replaced["updatedAt"] > known["updatedAt"]
    for new in (created, other):
        assert new["id"].startswith("crm_")
        assert new["id"] not in (known["id"], new["externalId"])
        assert new["createdAt"] == new["updatedAt"]
    records = {record["externalId"]: record for record in await all_records(crm)}
    assert records == {record["externalId"]: record for record in results}


async def test_upsert_replaces_every_field(crm: Crm) -> None:
    await upsert(crm, [customer("1", phone="+44 1", address="Somewhere")])
    replacement = customer("1")
    del replacement["phone"], replacement["address"]

    [record] = (await upsert(crm, [replacement])).json()["results"]

    assert (record["phone"], record["address"]) == (None, "")
    assert [fields(r) for r in await all_records(crm)] == [fields(record)]


async def test_invalid_and_repeated_inputs_fail_alone_with_207(crm: Crm) -> None:
    inputs = [
        customer("1"),
        customer("2", email="not-an-email"),
        customer("1", firstName="Again"),
        {"firstName": "Nobody"},
        {"externalId": 7, "firstName": "A number"},
        customer("3"),
    ]

    response = await upsert(crm, inputs)

    assert response.status_code == 207, response.text
    body = response.json()
    assert [fields(record) for record in body["results"]] == [inputs[0], inputs[5]]
    errors = body["errors"]
    assert [(e["index"], e["externalId"], e["status"]) for e in errors] == [
        (1, "2", 422),
        (2, "1", 409),
        (3, None, 422),
        (4, None, 422),
    ]
    assert "email" in errors[0]["detail"]
    assert "input 0" in errors[1]["detail"]
    assert all(field in errors[2]["detail"] for field in ("externalId", "lastName", "email"))
    records = await all_records(crm)
    assert [(r["externalId"], r["firstName"]) for r in records] == [("1", "Ada"), ("3", "Ada")]


async def test_a_repeated_external_id_is_refused_even_after_its_first_input_failed(
    crm: Crm,
) -> None:
    response = await upsert(crm, [customer("1", email="bad"), customer("1")])

    assert response.status_code == 207
    errors = response.json()["errors"]
    assert [(e["index"], e["status"]) for e in errors] == [(0, 422), (1, 409)]
    assert await all_records(crm) == []


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": []},
        {"inputs": [customer(str(n)) for n in range(101)]},
        {"inputs": customer("1")},
        {"inputs": [customer("1"), "not an object"]},
        {"inputs": None},
        {},
        [customer("1")],
    ],
    ids=["none", "101", "not-a-list", "not-an-object", "null", "no-inputs", "bare-list"],
)
async def test_a_body_that_is_no_batch_answers_422_whole_and_is_logged_once(
    crm: Crm, body: Any
) -> None:
    response = await crm.client.post(BATCH, json=body, headers={"Idempotency-Key": "bad"})

    problem = assert_problem(response, 422)
    assert problem["errors"]
    assert problem["detail"].startswith("invalid input")
    entries = await log(crm)
    assert await all_records(crm) == []
    assert [(e["path"], e["status"], e["idempotencyKey"]) for e in entries] == [(BATCH, 422, "bad")]
    assert entries[0]["body"] == body


async def test_a_body_that_is_not_json_answers_422(crm: Crm) -> None:
    response = await crm.client.post(
        BATCH, content=b"{not json", headers={"content-type": "application/json"}
    )

    problem = assert_problem(response, 422)
    assert [error["field"] for error in problem["errors"]] == ["body"]


async def test_100_inputs_are_accepted(crm: Crm) -> None:
    response = await upsert(crm, [customer(str(n)) for n in range(100)])

    assert response.status_code == 200
    assert len(response.json()["results"]) == 100
    assert len(await all_records(crm)) == 100


async def test_batch_routes_are_not_taken_for_a_record_id(crm: Crm) -> None:
    created = await upsert(crm, [customer("1")])
    deleted = await crm.client.post(BATCH_DELETE, json={"ids": ["crm_unknown"]})

    assert created.status_code == 200
    assert deleted.status_code == 200
    # The record routes still take "batch" as an id, which no record has.
    assert_problem(await crm.client.get(BATCH), 404)
    assert_problem(await crm.client.put(BATCH, json=customer("1")), 404)
    assert_problem(await crm.client.delete(BATCH), 404)


async def test_concurrent_batches_of_the_same_new_records_make_each_record_once(
    crm: Crm,
) -> None:
    # The delay keeps the calls under way together: on PostgreSQL, a call whose insert the
    # unique external id refuses (another call made the record meanwhile) reads them again.
    await set_faults(crm, latencyMs=100)
    inputs = [customer(str(n)) for n in range(10)]

    answers = await asyncio.gather(*(upsert(crm, inputs) for _ in range(4)))

    assert [answer.status_code for answer in answers] == [200] * 4
    answered = {(r["externalId"], r["id"]) for a in answers for r in a.json()["results"]}
    assert answered == {(r["externalId"], r["id"]) for r in await all_records(crm)}
    assert len(answered) == 10


# --- request log ---------------------------------------------------------------------------


async def test_each_record_is_its_own_log_entry_with_the_key_and_its_own_status(
    crm: Crm,
) -> None:
    known = (await crm.client.post(CUSTOMERS, json=customer("1"))).json()
    inputs = [customer("2"), customer("1"), customer("3", email="bad"), customer("2")]

    response = await upsert(crm, inputs, **{"Idempotency-Key": "b-1"})

    assert response.status_code == 207
    assert await batch_log(crm) == [
        ("POST", BATCH, 201, "2", "b-1"),
        ("POST", BATCH, 200, "1", "b-1"),
        ("POST", BATCH, 422, "3", "b-1"),
        ("POST", BATCH, 409, "2", "b-1"),
    ]
    entries = [e for e in await log(crm) if e["path"] == BATCH]
    assert [e["body"] for e in entries] == inputs
    assert len({e["receivedAt"] for e in entries}) == 1
    only_1 = (await crm.client.get(REQUESTS, params={"externalId": "1"})).json()
    assert [(e["path"], e["status"]) for e in only_1["items"]] == [(CUSTOMERS, 201), (BATCH, 200)]
    assert known["id"] in {r["id"] for r in response.json()["results"]}


async def test_without_a_key_the_entries_have_none(crm: Crm) -> None:
    await upsert(crm, [customer("1"), customer("2")])

    assert await batch_log(crm) == [
        ("POST", BATCH, 201, "1", None),
        ("POST", BATCH, 201, "2", None),
    ]


# --- faults --------------------------------------------------------------------------------


async def test_error_rate_one_fails_every_record_with_207_and_applies_none(crm: Crm) -> None:
    known = (await crm.client.post(CUSTOMERS, json=customer("1"))).json()
    await set_faults(crm, errorRate=1.0, statusCode=502)

    response = await upsert(
        crm, [customer("1", firstName="Changed"), customer("2")], **{"Idempotency-Key": "e"}
    )

    assert response.status_code == 207, response.text
    body = response.json()
    assert body["results"] == []
    assert [(e["index"], e["externalId"], e["status"]) for e in body["errors"]] == [
        (0, "1", 502),
        (1, "2", 502),
    ]
    assert all(e["detail"] == "fault injected: a random failure" for e in body["errors"])
    await set_faults(crm, errorRate=0.0)
    assert await all_records(crm) == [known]
    assert await batch_log(crm) == [
        ("POST", BATCH, 502, "1", "e"),
        ("POST", BATCH, 502, "2", "e"),
    ]


async def test_error_rate_fails_the_records_it_draws_and_applies_the_others(crm: Crm) -> None:
    await set_faults(crm, errorRate=0.5, statusCode=503)
    # One draw per input, in order: the inputs drawn below 0.5 fail.
    crm.runtime.rng = Draws([0.1, 0.9, 0.4, 0.6, 0.7])
    inputs = [customer(str(n)) for n in range(5)]

    response = await upsert(crm, inputs)

    assert response.status_code == 207
    body = response.json()
    assert [r["externalId"] for r in body["results"]] == ["1", "3", "4"]
    assert [(e["externalId"], e["status"]) for e in body["errors"]] == [("0", 503), ("2", 503)]
    await set_faults(crm, errorRate=0.0)
    assert sorted(r["externalId"] for r in await all_records(crm)) == ["1", "3", "4"]
    assert [entry[2:4] for entry in await batch_log(crm)] == [
        (503, "0"),
        (201, "1"),
        (503, "2"),
        (201, "3"),
        (201, "4"),
    ]


async def test_random_error_rate_answers_every_input_once(crm: Crm) -> None:
    await set_faults(crm, errorRate=0.5)
    inputs = [customer(str(n)) for n in range(40)]

    response = await upsert(crm, inputs)

    body = response.json()
    assert response.status_code == (207 if body.get("errors") else 200)
    applied = {r["externalId"] for r in body["results"]}
    failed = {e["externalId"] for e in body.get("errors", [])}
    assert applied | failed == {str(n) for n in range(40)}
    assert not applied & failed
    await set_faults(crm, errorRate=0.0)
    assert {r["externalId"] for r in await all_records(crm)} == applied


async def test_down_answers_the_whole_call_and_applies_nothing(crm: Crm) -> None:
    known = (await crm.client.post(CUSTOMERS, json=customer("1"))).json()
    await set_faults(crm, down=True, statusCode=503, retryAfterSeconds=30)
    inputs = [customer("1", firstName="Changed"), customer("2")]

    response = await upsert(crm, inputs, **{"Idempotency-Key": "d"})
    deleting = await crm.client.post(
        BATCH_DELETE, json={"ids": [known["id"]]}, headers={"Idempotency-Key": "dd"}
    )

    for answer in (response, deleting):
        problem = assert_problem(answer, 503)
        assert problem["detail"] == "fault injected: the CRM is down"
        assert answer.headers["retry-after"] == "30"
    await set_faults(crm, down=False)
    assert await all_records(crm) == [known]
    # As a single call's: an entry a record, with the call's status and the record's id.
    assert await batch_log(crm) == [
        ("POST", BATCH, 503, "1", "d"),
        ("POST", BATCH, 503, "2", "d"),
        ("POST", BATCH_DELETE, 503, "1", "dd"),
    ]
    # The fault was not kept for the key: the retry runs.
    retry = await upsert(crm, inputs, **{"Idempotency-Key": "d"})
    assert retry.status_code == 200
    assert "idempotent-replayed" not in retry.headers
    assert [fields(r) for r in await all_records(crm)] == inputs


async def test_latency_delays_the_call_once(crm: Crm) -> None:
    await set_faults(crm, latencyMs=300)

    started = asyncio.get_running_loop().time()
    response = await upsert(crm, [customer(str(n)) for n in range(10)])
    elapsed = asyncio.get_running_loop().time() - started

    assert response.status_code == 200
    assert 0.3 <= elapsed < 2.0  # not 3 s: a delay a record


async def test_rate_limit_counts_a_batch_call_once(crm: Crm) -> None:
    crm.runtime.rate_window = OneSecond()
    await set_faults(crm, rateLimitPerSecond=2, retryAfterSeconds=4)

    first = await upsert(crm, [customer(str(n)) for n in range(10)])
    second = await crm.client.post(BATCH_DELETE, json={"ids": [f"crm_{n}" for n in range(10)]})
    third = await upsert(crm, [customer("10"), customer("11")], **{"Idempotency-Key": "r"})

    assert (first.status_code, second.status_code) == (200, 200)
    assert_problem(third, 429)
    assert third.headers["retry-after"] == "4"
    await set_faults(crm, rateLimitPerSecond=None)
    assert len(await all_records(crm)) == 10
    assert [entry[2:] for entry in (await batch_log(crm))[-2:]] == [
        (429, "10", "r"),
        (429, "11", "r"),
    ]


# --- idempotency ---------------------------------------------------------------------------


async def test_a_repeated_key_gets_the_first_answer_and_changes_nothing(crm: Crm) -> None:
    first = await upsert(crm, [customer("1"), customer("2")], **{"Idempotency-Key": "same"})
    later = await upsert(crm, [customer("1", firstName="Later")])

    repeat = await upsert(
        crm, [customer("1", firstName="Repeat"), customer("3")], **{"Idempotency-Key": "same"}
    )

    assert first.status_code == repeat.status_code == 200
    assert repeat.json() == first.json()
    assert repeat.headers["idempotent-replayed"] == "true"
    records = await all_records(crm)
    assert [r["externalId"] for r in records] == ["1", "2"]
    assert records[0] == later.json()["results"][0]
    # The repeat is logged as received, each record with the replayed status.
    assert (await batch_log(crm))[-2:] == [
        ("POST", BATCH, 200, "1", "same"),
        ("POST", BATCH, 200, "3", "same"),
    ]


async def test_a_repeated_key_replays_a_207_too(crm: Crm) -> None:
    await set_faults(crm, errorRate=1.0)
    first = await upsert(crm, [customer("1")], **{"Idempotency-Key": "p"})
    await set_faults(crm, errorRate=0.0)

    repeat = await upsert(crm, [customer("1")], **{"Idempotency-Key": "p"})

    assert first.status_code == repeat.status_code == 207
    assert repeat.json() == first.json()
    assert await all_records(crm) == []


async def test_concurrent_repeats_of_a_key_run_the_batch_once(crm: Crm) -> None:
    await set_faults(crm, latencyMs=100)

    answers = await asyncio.gather(
        *(upsert(crm, [customer("1"), customer("2")], **{"Idempotency-Key": "c"}) for _ in range(3))
    )

    assert [answer.status_code for answer in answers] == [200] * 3
    assert answers[0].json() == answers[1].json() == answers[2].json()
    assert [entry[2] for entry in await batch_log(crm)] == [201, 201, 200, 200, 200, 200]


async def test_a_repeated_key_of_a_batch_delete_answers_the_same_again(crm: Crm) -> None:
    [record] = (await upsert(crm, [customer("1")])).json()["results"]
    body = {"ids": [record["id"], "crm_unknown"]}

    first = await crm.client.post(BATCH_DELETE, json=body, headers={"Idempotency-Key": "x"})
    repeat = await crm.client.post(BATCH_DELETE, json=body, headers={"Idempotency-Key": "x"})
    without_key = await crm.client.post(BATCH_DELETE, json=body)

    expected = {"deleted": [record["id"]], "notFound": ["crm_unknown"]}
    assert (first.status_code, first.json()) == (200, expected)
    assert (repeat.status_code, repeat.json()) == (200, expected)
    assert repeat.headers["idempotent-replayed"] == "true"
    assert without_key.json() == {"deleted": [], "notFound": [record["id"], "crm_unknown"]}


# --- delete --------------------------------------------------------------------------------


async def test_delete_deletes_the_found_and_lists_the_not_found(crm: Crm) -> None:
    results = (await upsert(crm, [customer(str(n)) for n in range(3)])).json()["results"]
    ids = [record["id"] for record in results]

    response = await crm.client.post(
        BATCH_DELETE, json={"ids": ["crm_none", ids[2], ids[0]]}, headers={"Idempotency-Key": "k"}
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": [ids[2], ids[0]], "notFound": ["crm_none"]}
    assert await all_records(crm) == [results[1]]
    assert_problem(await crm.client.get(f"{CUSTOMERS}/{ids[0]}"), 404)
    deletes = [e for e in await log(crm) if e["path"] == BATCH_DELETE]
    assert [(e["status"], e["externalId"], e["idempotencyKey"], e["body"]) for e in deletes] == [
        (404, None, "k", {"id": "crm_none"}),
        (204, "2", "k", {"id": ids[2]}),
        (204, "0", "k", {"id": ids[0]}),
    ]
    # The external id is free again.
    again = await upsert(crm, [customer("0")])
    assert again.json()["results"][0]["id"] not in ids


async def test_delete_refuses_a_repeated_id_and_the_ids_the_error_rate_draws(crm: Crm) -> None:
    results = (await upsert(crm, [customer(str(n)) for n in range(3)])).json()["results"]
    ids = [record["id"] for record in results]
    await set_faults(crm, errorRate=0.5, statusCode=500)
    crm.runtime.rng = Draws([0.9, 0.1, 0.9, 0.9])

    response = await crm.client.post(
        BATCH_DELETE, json={"ids": [ids[0], ids[1], ids[0], "crm_none"]}
    )

    assert response.status_code == 207, response.text
    body = response.json()
    assert (body["deleted"], body["notFound"]) == ([ids[0]], ["crm_none"])
    assert [(e["index"], e["id"], e["externalId"], e["status"]) for e in body["errors"]] == [
        (1, ids[1], "1", 500),
        (2, ids[0], "0", 409),
    ]
    await set_faults(crm, errorRate=0.0)
    assert await all_records(crm) == results[1:]
    assert [entry[2:4] for entry in await batch_log(crm) if entry[1] == BATCH_DELETE] == [
        (204, "0"),
        (500, "1"),
        (409, "0"),
        (404, None),
    ]


async def test_delete_error_rate_one_deletes_nothing(crm: Crm) -> None:
    results = (await upsert(crm, [customer("1")])).json()["results"]
    await set_faults(crm, errorRate=1.0)

    response = await crm.client.post(BATCH_DELETE, json={"ids": [results[0]["id"], "crm_x"]})

    assert response.status_code == 207
    body = response.json()
    assert (body["deleted"], body["notFound"]) == ([], [])
    assert [(e["externalId"], e["status"]) for e in body["errors"]] == [("1", 503), (None, 503)]
    await set_faults(crm, errorRate=0.0)
    assert await all_records(crm) == results


KNOWN = "<known>"  # the id of a record the test made


@pytest.mark.parametrize(
    "body",
    [
        {"ids": []},
        {"ids": [KNOWN] + [f"crm_{n}" for n in range(100)]},
        {"ids": KNOWN},
        {"ids": [KNOWN, 1]},
        {"ids": [KNOWN, ""]},
        {"ids": [KNOWN, "x" * 256]},
        {"id": [KNOWN]},
    ],
    ids=["none", "101", "not-a-list", "not-a-string", "empty", "too-long", "no-ids"],
)
async def test_delete_body_that_is_no_batch_answers_422_and_deletes_nothing(
    crm: Crm, body: dict[str, Any]
) -> None:
    [record] = (await upsert(crm, [customer("1")])).json()["results"]
    sent = json.loads(json.dumps(body).replace(KNOWN, record["id"]))

    response = await crm.client.post(BATCH_DELETE, json=sent)

    assert_problem(response, 422)
    assert await all_records(crm) == [record]
    assert (await batch_log(crm))[-1][1:3] == (BATCH_DELETE, 422)


async def test_delete_of_100_ids_is_accepted(crm: Crm) -> None:
    results = (await upsert(crm, [customer(str(n)) for n in range(100)])).json()["results"]

    response = await crm.client.post(BATCH_DELETE, json={"ids": [r["id"] for r in results]})

    assert response.status_code == 200
    assert len(response.json()["deleted"]) == 100
    assert await all_records(crm) == []


# --- auth ----------------------------------------------------------------------------------


async def test_batch_calls_need_the_bearer_token_when_it_is_set(start: StartCrm) -> None:
    async with start(api_token="s3cret") as crm:
        refused = await upsert(crm, [customer("1")], **{"Idempotency-Key": "a"})
        wrong = await crm.client.post(
            BATCH_DELETE, json={"ids": ["crm_1"]}, headers={"Authorization": "Bearer guess"}
        )
        allowed = await upsert(
            crm, [customer("1")], **{"Idempotency-Key": "a", "Authorization": "Bearer s3cret"}
        )
        deleted = await crm.client.post(
            BATCH_DELETE,
            json={"ids": [allowed.json()["results"][0]["id"]]},
            headers={"Authorization": "Bearer s3cret"},
        )
        entries = await batch_log(crm)

    for answer in (refused, wrong):
        assert_problem(answer, 401)
        assert answer.headers["www-authenticate"] == "Bearer"
    # The 401 was not kept for the key: the call with the token ran.
    assert allowed.status_code == 200
    assert deleted.status_code == 200
    assert [(path, status) for _, path, status, _, _ in entries] == [
        (BATCH, 401),
        (BATCH_DELETE, 401),
        (BATCH, 201),
        (BATCH_DELETE, 204),
    ]


# --- OpenAPI -------------------------------------------------------------------------------


async def test_openapi_documents_the_batch_endpoints(crm: Crm) -> None:
    schema = (await crm.client.get("/openapi.json")).json()

    for path, ok, partial in (
        (BATCH, "CrmCustomerBatchResults", "CrmCustomerBatchPartial"),
        (BATCH_DELETE, "CrmCustomerBatchDeleted", "CrmCustomerBatchDeletePartial"),
    ):
        answers = schema["paths"][path]["post"]["responses"]
        assert set(answers) >= {"200", "207", "401", "422", "429", "503"}
        for code, name in (("200", ok), ("207", partial)):
            body = answers[code]["content"]["application/json"]
            assert body["schema"] == {"$ref": f"#/components/schemas/{name}"}
            assert body["example"]
        assert list(answers["422"]["content"]) == [PROBLEM_JSON]
    request = schema["components"]["schemas"]["CrmCustomerBatchRequest"]["properties"]["inputs"]
    assert request["items"] == {"$ref": "#/components/schemas/CrmCustomerRequest"}
    assert (request["minItems"], request["maxItems"]) == (1, 100)
