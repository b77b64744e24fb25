"""The CRM mock's HTTP contract (README: "The CRM mock"), in-process on a real SQLite file."""

import asyncio
import time
from typing import Any

import httpx
import pytest
from support import eventually

CUSTOMERS = "/api/crm/customers"
FAULTS = "/api/crm/_faults"
REQUESTS = "/api/crm/_requests"
PROBLEM_JSON = "application/problem+json"
HEALTHY = {
    "down": False,
    "errorRate": 0.0,
    "statusCode": 503,
    "latencyMs": 0,
    "retryAfterSeconds": None,
    "rateLimitPerSecond": None,
}


def customer_body(external_id: str = "42", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "externalId": external_id,
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": "ada@example.com",
        "phone": "+44 20 7946 0000",
        "address": "12 St James's Square, London, SW1Y 4JH, GB",
    }
    body.update(overrides)
    return body


async def create(crm: httpx.AsyncClient, external_id: str = "42", **overrides: Any) -> Any:
    response = await crm.post(CUSTOMERS, json=customer_body(external_id, **overrides))
    assert response.status_code == 201, response.text
    return response.json()


async def set_faults(crm: httpx.AsyncClient, **settings: Any) -> None:
    response = await crm.put(FAULTS, json=settings)
    assert response.status_code == 200, response.text


async def all_records(crm: httpx.AsyncClient) -> list[Any]:
    response = await crm.get(CUSTOMERS, params={"limit": 1000})
    assert response.status_code == 200
    items: list[Any] = response.json()["items"]
    return items


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"] == "about:blank"
    assert problem["title"]
    assert problem["detail"]
    return problem


# --- customers ---------------------------------------------------------------------------


async def test_create_assigns_crm_id_distinct_from_external_id(crm_api: httpx.AsyncClient) -> None:
    response = await crm_api.post(CUSTOMERS, json=customer_body("42"))

    assert response.status_code == 201
    record = response.json()
    assert record["id"].startswith("crm_")
    assert record["id"] != "42"
    assert record["externalId"] == "42"
    assert {k: record[k] for k in customer_body()} == customer_body("42")
    assert record["createdAt"] == record["updatedAt"]
    assert record["createdAt"].endswith("Z")
    assert response.headers["location"] == f"{CUSTOMERS}/{record['id']}"
    fetched = await crm_api.get(f"{CUSTOMERS}/{record['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == record


async def test_create_defaults_phone_to_null_and_address_to_empty(
    crm_api: httpx.AsyncClient,
) -> None:
    body = customer_body()
    del body["phone"], body["address"]

    response = await crm_api.post(CUSTOMERS, json=body)

    assert response.status_code == 201
    assert response.json()["phone"] is None
    assert response.json()["address"] == ""


async def test_create_stores_the_email_exactly_as_sent(crm_api: httpx.AsyncClient) -> None:
    record = await create(crm_api, email="Ada.Lovelace+crm_api@Example.COM")

    assert record["email"] == "Ada.Lovelace+crm_api@Example.COM"


async def test_create_with_known_external_id_answers_409_with_existing_record(
    crm_api: httpx.AsyncClient,
) -> None:
    first = await create(crm_api, "42")

    response = await crm_api.post(CUSTOMERS, json=customer_body("42", firstName="Other"))

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/json"
    assert response.json() == first
    assert await all_records(crm_api) == [first]


async def test_invalid_body_422_problem_json_lists_fields(crm_api: httpx.AsyncClient) -> None:
    response = await crm_api.post(
        CUSTOMERS,
        json={"externalId": "", "firstName": "", "lastName": "x" * 101, "email": "not-an-email"},
    )

    problem = assert_problem(response, 422)
    fields = {error["field"] for error in problem["errors"]}
    assert fields == {"externalId", "firstName", "lastName", "email"}
    assert all(error["message"] for error in problem["errors"])
    assert await all_records(crm_api) == []


async def test_body_that_is_not_json_answers_422(crm_api: httpx.AsyncClient) -> None:
    response = await crm_api.post(
        CUSTOMERS, content=b"{not json", headers={"content-type": "application/json"}
    )

    problem = assert_problem(response, 422)
    assert [error["field"] for error in problem["errors"]] == ["body"]


async def test_update_replaces_every_field(crm_api: httpx.AsyncClient) -> None:
    record = await create(crm_api, "42")
    replacement = customer_body("42", firstName="Augusta", email="augusta@example.com")
    del replacement["phone"], replacement["address"]

    response = await crm_api.put(f"{CUSTOMERS}/{record['id']}", json=replacement)

    assert response.status_code == 200
    updated = response.json()
    assert updated["id"] == record["id"]
    assert updated["firstName"] == "Augusta"
    assert updated["email"] == "augusta@example.com"
    assert updated["phone"] is None
    assert updated["address"] == ""
    assert updated["createdAt"] == record["createdAt"]
    assert updated["updatedAt"] > record["updatedAt"]
    assert (await crm_api.get(f"{CUSTOMERS}/{record['id']}")).json() == updated


async def test_update_to_external_id_of_another_record_answers_409(
    crm_api: httpx.AsyncClient,
) -> None:
    first = await create(crm_api, "1")
    second = await create(crm_api, "2", email="two@example.com")

    response = await crm_api.put(f"{CUSTOMERS}/{second['id']}", json=customer_body("1"))

    problem = assert_problem(response, 409)
    assert first["id"] in problem["detail"]
    assert await all_records(crm_api) == [first, second]


async def test_update_invalid_body_422(crm_api: httpx.AsyncClient) -> None:
    record = await create(crm_api)

    response = await crm_api.put(f"{CUSTOMERS}/{record['id']}", json={"firstName": "Ada"})

    problem = assert_problem(response, 422)
    assert {"externalId", "lastName", "email"} <= {e["field"] for e in problem["errors"]}
    assert await all_records(crm_api) == [record]


async def test_update_delete_404(crm_api: httpx.AsyncClient) -> None:
    assert_problem(await crm_api.put(f"{CUSTOMERS}/crm_unknown", json=customer_body()), 404)
    assert_problem(await crm_api.delete(f"{CUSTOMERS}/crm_unknown"), 404)
    assert_problem(await crm_api.get(f"{CUSTOMERS}/crm_unknown"), 404)
    assert await all_records(crm_api) == []


async def test_delete_removes_the_record(crm_api: httpx.AsyncClient) -> None:
    record = await create(crm_api)

    response = await crm_api.delete(f"{CUSTOMERS}/{record['id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await crm_api.get(f"{CUSTOMERS}/{record['id']}"), 404)
    assert_problem(await crm_api.delete(f"{CUSTOMERS}/{record['id']}"), 404)
    # The external id is free again.
    assert (await crm_api.post(CUSTOMERS, json=customer_body())).status_code == 201


async def test_list_paginates_oldest_first(crm_api: httpx.AsyncClient) -> None:
    created = [await create(crm_api, str(n), email=f"c{n}@example.com") for n in range(5)]

    pages = [
        (await crm_api.get(CUSTOMERS, params={"limit": 2, "offset": offset})).json()
        for offset in (0, 2, 4)
    ]

    assert [page["total"] for page in pages] == [5, 5, 5]
    assert [len(page["items"]) for page in pages] == [2, 2, 1]
    assert [item for page in pages for item in page["items"]] == created


async def test_list_filters_by_external_id(crm_api: httpx.AsyncClient) -> None:
    await create(crm_api, "1")
    second = await create(crm_api, "2", email="two@example.com")

    found = (await crm_api.get(CUSTOMERS, params={"externalId": "2"})).json()
    missing = (await crm_api.get(CUSTOMERS, params={"externalId": "3"})).json()

    assert found == {"items": [second], "total": 1}
    assert missing == {"items": [], "total": 0}


async def test_list_default_limit_is_50(crm_api: httpx.AsyncClient) -> None:
    for n in range(51):
        await create(crm_api, str(n))

    page = (await crm_api.get(CUSTOMERS)).json()

    assert len(page["items"]) == 50
    assert page["total"] == 51


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": -1}, "offset"),
    ],
)
async def test_list_with_bad_paging_answers_422(
    crm_api: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await crm_api.get(CUSTOMERS, params=params), 422)

    assert [error["field"] for error in problem["errors"]] == [field]


# --- idempotency ---------------------------------------------------------------------------


async def test_repeated_idempotency_key_returns_first_answer_and_changes_nothing(
    crm_api: httpx.AsyncClient,
) -> None:
    first = await crm_api.post(
        CUSTOMERS, json=customer_body("42"), headers={"Idempotency-Key": "c-1"}
    )
    repeat = await crm_api.post(
        CUSTOMERS,
        json=customer_body("43", firstName="Someone else"),
        headers={"Idempotency-Key": "c-1"},
    )

    assert first.status_code == repeat.status_code == 201
    assert repeat.json() == first.json()
    assert repeat.headers["location"] == first.headers["location"]
    assert repeat.headers["idempotent-replayed"] == "true"
    assert await all_records(crm_api) == [first.json()]


async def test_repeated_idempotency_key_of_update_does_not_undo_a_later_update(
    crm_api: httpx.AsyncClient,
) -> None:
    record = await create(crm_api)
    url = f"{CUSTOMERS}/{record['id']}"
    first = await crm_api.put(
        url, json=customer_body(firstName="Second"), headers={"Idempotency-Key": "u-1"}
    )
    later = await crm_api.put(url, json=customer_body(firstName="Third"))

    repeat = await crm_api.put(
        url, json=customer_body(firstName="Second"), headers={"Idempotency-Key": "u-1"}
    )

    assert repeat.status_code == 200
    assert repeat.json() == first.json()
    assert (await crm_api.get(url)).json() == later.json()


async def test_repeated_idempotency_key_of_delete_answers_204_again(
    crm_api: httpx.AsyncClient,
) -> None:
    record = await create(crm_api)
    url = f"{CUSTOMERS}/{record['id']}"

    first = await crm_api.delete(url, headers={"Idempotency-Key": "d-1"})
    repeat = await crm_api.delete(url, headers={"Idempotency-Key": "d-1"})
    without_key = await crm_api.delete(url)

    assert (first.status_code, repeat.status_code, without_key.status_code) == (204, 204, 404)
    assert repeat.content == b""


async def test_repeated_idempotency_key_replays_an_error_answer_too(
    crm_api: httpx.AsyncClient,
) -> None:
    first = await crm_api.post(
        CUSTOMERS, json={"externalId": "42"}, headers={"Idempotency-Key": "k"}
    )
    repeat = await crm_api.post(CUSTOMERS, json=customer_body(), headers={"Idempotency-Key": "k"})

    assert first.status_code == repeat.status_code == 422
    assert repeat.headers["content-type"] == PROBLEM_JSON
    assert repeat.json() == first.json()
    assert await all_records(crm_api) == []


async def test_concurrent_same_idempotency_key_creates_one_record(
    crm_api: httpx.AsyncClient,
) -> None:
    # The delay keeps both calls in flight together; only the per-key lock then stops the
    # second from executing (it would get a 409, not the replayed 201).
    await set_faults(crm_api, latencyMs=200)

    answers = await asyncio.gather(
        *(
            crm_api.post(CUSTOMERS, json=customer_body("42"), headers={"Idempotency-Key": "same"})
            for _ in range(2)
        )
    )

    assert [answer.status_code for answer in answers] == [201, 201]
    assert answers[0].json() == answers[1].json()
    assert len(await all_records(crm_api)) == 1


async def test_concurrent_creates_of_one_external_id_make_one_record(
    crm_api: httpx.AsyncClient,
) -> None:
    await set_faults(crm_api, latencyMs=200)

    answers = await asyncio.gather(
        *(
            crm_api.post(CUSTOMERS, json=customer_body("42"), headers={"Idempotency-Key": f"k{n}"})
            for n in range(3)
        )
    )

    assert sorted(answer.status_code for answer in answers) == [201, 409, 409]
    records = await all_records(crm_api)
    assert len(records) == 1
    assert all(answer.json() == records[0] for answer in answers)


# --- faults --------------------------------------------------------------------------------


async def test_faults_start_healthy(crm_api: httpx.AsyncClient) -> None:
    response = await crm_api.get(FAULTS)

    assert response.status_code == 200
    assert response.json() == HEALTHY


async def test_down_switch_answers_status_code_with_retry_after_and_changes_nothing(
    crm_api: httpx.AsyncClient,
) -> None:
    record = await create(crm_api, "1")
    url = f"{CUSTOMERS}/{record['id']}"
    await set_faults(crm_api, down=True, statusCode=503, retryAfterSeconds=30)

    answers = [
        await crm_api.post(CUSTOMERS, json=customer_body("2"), headers={"Idempotency-Key": "n"}),
        await crm_api.put(url, json=customer_body("1", firstName="Changed")),
        await crm_api.delete(url),
        await crm_api.get(url),
        await crm_api.get(CUSTOMERS),
    ]

    for answer in answers:
        assert_problem(answer, 503)
        assert answer.headers["retry-after"] == "30"
    await set_faults(crm_api, down=False)
    assert await all_records(crm_api) == [record]
    # The faulted answer was not kept for the key: the retry executes.
    retry = await crm_api.post(CUSTOMERS, json=customer_body("2"), headers={"Idempotency-Key": "n"})
    assert retry.status_code == 201


async def test_down_switch_without_retry_after_sends_no_header(crm_api: httpx.AsyncClient) -> None:
    await set_faults(crm_api, down=True, statusCode=500)

    response = await crm_api.post(CUSTOMERS, json=customer_body())

    assert_problem(response, 500)
    assert "retry-after" not in response.headers


async def test_down_switch_leaves_control_endpoints_and_health_alone(
    crm_api: httpx.AsyncClient,
) -> None:
    await set_faults(crm_api, down=True, errorRate=1.0, latencyMs=0)

    assert (await crm_api.get(FAULTS)).status_code == 200
    assert (await crm_api.get(REQUESTS)).status_code == 200
    assert (await crm_api.get("/health")).json() == {"status": "ok"}


async def test_error_rate_one_fails_every_call_and_zero_none(crm_api: httpx.AsyncClient) -> None:
    await set_faults(crm_api, errorRate=1.0, statusCode=429, retryAfterSeconds=0)
    failed = [await crm_api.post(CUSTOMERS, json=customer_body(str(n))) for n in range(5)]
    await set_faults(crm_api, errorRate=0.0)
    passed = [await crm_api.post(CUSTOMERS, json=customer_body(str(n))) for n in range(5)]

    assert all(answer.status_code == 429 for answer in failed)
    assert all(answer.headers["retry-after"] == "0" for answer in failed)
    assert all(answer.status_code == 201 for answer in passed)
    assert len(await all_records(crm_api)) == 5


async def test_latency_delays_each_call(crm_api: httpx.AsyncClient) -> None:
    await set_faults(crm_api, latencyMs=150)

    started = time.monotonic()
    response = await crm_api.get(CUSTOMERS)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert elapsed >= 0.15


async def test_fault_put_accepts_subset(crm_api: httpx.AsyncClient) -> None:
    first = await crm_api.put(FAULTS, json={"errorRate": 0.25})
    second = await crm_api.put(FAULTS, json={"latencyMs": 5, "retryAfterSeconds": 10})
    cleared = await crm_api.put(FAULTS, json={"retryAfterSeconds": None})
    nothing = await crm_api.put(FAULTS, json={})

    assert first.json() == {**HEALTHY, "errorRate": 0.25}
    assert second.json() == {**HEALTHY, "errorRate": 0.25, "latencyMs": 5, "retryAfterSeconds": 10}
    assert cleared.json() == {**HEALTHY, "errorRate": 0.25, "latencyMs": 5}
    assert nothing.json() == cleared.json()
    assert (await crm_api.get(FAULTS)).json() == cleared.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"errorRate": 1.5}, "errorRate"),
        ({"errorRate": -0.1}, "errorRate"),
        ({"statusCode": 399}, "statusCode"),
        ({"statusCode": 600}, "statusCode"),
        ({"latencyMs": -1}, "latencyMs"),
        ({"latencyMs": 600_001}, "latencyMs"),
        ({"retryAfterSeconds": -1}, "retryAfterSeconds"),
        ({"down": None}, "down"),
        ({"down": "sometimes"}, "down"),
        ({"dwon": True}, "dwon"),
    ],
)
async def test_invalid_fault_settings_422(
    crm_api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    await set_faults(crm_api, latencyMs=7)

    response = await crm_api.put(FAULTS, json={"down": True, **body})

    problem = assert_problem(response, 422)
    assert [error["field"] for error in problem["errors"]] == [field]
    assert (await crm_api.get(FAULTS)).json() == {**HEALTHY, "latencyMs": 7}


# --- auth ----------------------------------------------------------------------------------


async def test_bearer_token_required_when_set(start_crm: Any) -> None:
    async with start_crm(api_token="s3cret") as crm:
        missing = await crm.post(CUSTOMERS, json=customer_body(), headers={"Idempotency-Key": "a"})
        wrong = await crm.get(CUSTOMERS, headers={"Authorization": "Bearer guess"})
        basic = await crm.get(CUSTOMERS, headers={"Authorization": "Basic s3cret"})
        right = await crm.post(
            CUSTOMERS,
            json=customer_body(),
            headers={"Authorization": "Bearer s3cret", "Idempotency-Key": "a"},
        )
        controls = [await crm.get(FAULTS), await crm.get(REQUESTS), await crm.get("/health")]
        log = (await crm.get(REQUESTS)).json()

    for refused in (missing, wrong, basic):
        assert_problem(refused, 401)
        assert refused.headers["www-authenticate"] == "Bearer"
    # The 401 was not kept for the key: the call with the token executed.
    assert right.status_code == 201
    assert [control.status_code for control in controls] == [200, 200, 200]
    assert [entry["status"] for entry in log["items"]] == [401, 401, 401, 201]


async def test_no_token_needed_when_unset(crm_api: httpx.AsyncClient) -> None:
    response = await crm_api.get(CUSTOMERS, headers={"Authorization": "Bearer anything"})

    assert response.status_code == 200


# --- request log ---------------------------------------------------------------------------


async def test_request_log_records_every_call_oldest_first_and_limit_keeps_newest(
    crm_api: httpx.AsyncClient,
) -> None:
    record = await create(crm_api, "42")
    url = f"{CUSTOMERS}/{record['id']}"
    await crm_api.get(CUSTOMERS, params={"externalId": "42"})
    await crm_api.put(
        url, json=customer_body("42", firstName="B"), headers={"Idempotency-Key": "p"}
    )
    await crm_api.post(CUSTOMERS, json={"externalId": "7"})
    await set_faults(crm_api, down=True)
    await crm_api.delete(url, headers={"Idempotency-Key": "d"})
    await set_faults(crm_api, down=False)
    await crm_api.delete(url, headers={"Idempotency-Key": "d"})
    await crm_api.get(f"{CUSTOMERS}/crm_unknown")

    log = (await crm_api.get(REQUESTS)).json()

    summary = [
        (e["method"], e["path"], e["status"], e["externalId"], e["idempotencyKey"])
        for e in log["items"]
    ]
    assert summary == [
        ("POST", CUSTOMERS, 201, "42", None),
        ("GET", CUSTOMERS, 200, "42", None),
        ("PUT", url, 200, "42", "p"),
        ("POST", CUSTOMERS, 422, "7", None),
        ("DELETE", url, 503, "42", "d"),
        ("DELETE", url, 204, "42", "d"),
        ("GET", f"{CUSTOMERS}/crm_unknown", 404, None, None),
    ]
    assert log["total"] == 7
    assert log["items"][0]["body"] == customer_body("42")
    assert log["items"][3]["body"] == {"externalId": "7"}
    assert log["items"][4]["body"] is None
    received = [entry["receivedAt"] for entry in log["items"]]
    assert received == sorted(received)
    assert all(stamp.endswith("Z") for stamp in received)

    newest = (await crm_api.get(REQUESTS, params={"limit": 2})).json()
    assert newest == {"items": log["items"][-2:], "total": 7}

    only_42 = (await crm_api.get(REQUESTS, params={"externalId": "42", "limit": 3})).json()
    items = log["items"]
    assert only_42 == {"items": [items[2], items[4], items[5]], "total": 5}


async def test_request_log_keeps_a_body_that_is_not_json_as_null(
    crm_api: httpx.AsyncClient,
) -> None:
    await crm_api.post(CUSTOMERS, content=b"\xffnot json", headers={"content-type": "text/plain"})

    log = (await crm_api.get(REQUESTS)).json()

    assert [(e["status"], e["body"]) for e in log["items"]] == [(422, None)]


async def test_request_log_bad_limit_422(crm_api: httpx.AsyncClient) -> None:
    assert_problem(await crm_api.get(REQUESTS, params={"limit": 0}), 422)


# --- lifecycle -----------------------------------------------------------------------------


async def test_data_survives_restart(start_crm: Any) -> None:
    async with start_crm() as crm:
        record = await create(crm)
        await set_faults(crm, down=True)

    async with start_crm() as crm:
        fetched = await crm.get(f"{CUSTOMERS}/{record['id']}")
        log = (await crm.get(REQUESTS)).json()
        faults = (await crm.get(FAULTS)).json()

    assert fetched.status_code == 200
    assert fetched.json() == record
    assert [(entry["method"], entry["status"]) for entry in log["items"]] == [
        ("POST", 201),
        ("GET", 200),
    ]
    # Fault switches live in memory: a restarted CRM is healthy.
    assert faults == HEALTHY


async def test_unknown_path_answers_problem_json(crm_api: httpx.AsyncClient) -> None:
    assert_problem(await crm_api.get("/api/crm_api/nothing-here"), 404)


async def test_health(crm_api: httpx.AsyncClient) -> None:
    response = await crm_api.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_openapi_documents_errors_as_problem_json(crm_api: httpx.AsyncClient) -> None:
    schema = (await crm_api.get("/openapi.json")).json()

    create = schema["paths"][CUSTOMERS]["post"]["responses"]
    replace = schema["paths"][f"{CUSTOMERS}/{{crm_id}}"]["put"]["responses"]
    assert list(create["409"]["content"]) == ["application/json"]  # the existing record
    for code in ("401", "404", "409", "422", "503"):
        assert list(replace[code]["content"]) == [PROBLEM_JSON]
    assert "Problem" in schema["components"]["schemas"]


async def test_rate_limit_answers_429_with_retry_after_past_the_limit(
    crm_api: httpx.AsyncClient,
) -> None:
    await set_faults(crm_api, rateLimitPerSecond=1000, retryAfterSeconds=2)
    await set_faults(crm_api, rateLimitPerSecond=1)
    answers = [(await crm_api.get("/api/crm/customers")) for _ in range(3)]
    limited = [a for a in answers if a.status_code == 429]
    # Three calls span at most two wall-clock seconds: at least one is refused.
    assert limited, [a.status_code for a in answers]
    assert limited[0].headers["retry-after"] == "2"
    assert limited[0].headers["content-type"].startswith("application/problem+json")
    await set_faults(crm_api, rateLimitPerSecond=None)
    assert all([(await crm_api.get("/api/crm/customers")).status_code == 200 for _ in range(5)])


async def test_calls_in_flight_are_listed_until_answered(crm_api: httpx.AsyncClient) -> None:
    await set_faults(crm_api, latencyMs=300)
    sending = asyncio.create_task(crm_api.post(CUSTOMERS, json=customer_body("71")))

    async def listed() -> Any:
        return (await crm_api.get("/api/crm/_calls")).json()

    async def answering() -> Any:
        now = await listed()
        return now if now["inFlight"] else None

    now = await eventually(answering, within=5, interval=0.01)
    assert now == {"inFlight": 1, "calls": [{"method": "POST", "path": CUSTOMERS, "count": 1}]}
    assert (await sending).status_code == 201
    assert await listed() == {"inFlight": 0, "calls": []}
