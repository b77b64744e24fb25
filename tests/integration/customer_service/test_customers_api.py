"""The customer API of the README, on SQLite and PostgreSQL."""

from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from customer_service.app import create_app
from customer_service.config import Settings

ADA: dict[str, Any] = {
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": "+44 20 7946 0000",
    "address": {
        "street": "12 St James's Square",
        "city": "London",
        "state": None,
        "postalCode": "SW1Y 4JH",
        "country": "GB",
    },
}


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def _create(client: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    response = await client.post("/api/customers", json={**ADA, **changes})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_create_returns_201_location_etag_and_the_customer(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/api/customers", json=ADA)
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/api/customers/{body['id']}"
    assert response.headers["etag"] == '"1"'
    assert body["version"] == 1
    assert body["address"] == ADA["address"]
    assert body["crm"]["status"] in {"pending", "synced", "failed"}
    assert body["createdAt"].endswith("Z") or "+00:00" in body["createdAt"]


async def test_get_returns_the_stored_customer_and_etag(client: httpx.AsyncClient) -> None:
    created = await _create(client)
    response = await client.get(f"/api/customers/{created['id']}")
    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert response.json()["email"] == "ada@example.com"


async def test_invalid_body_is_422_listing_each_bad_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/customers", json={"firstName": "", "email": "not-an-email", "lastName": "x" * 101}
    )
    body = _problem(response, 422)
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"firstName", "lastName", "email"}


async def test_malformed_json_is_422_not_500(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/customers", content=b"{nope", headers={"content-type": "application/json"}
    )
    _problem(response, 422)


async def test_email_taken_regardless_of_case_is_409(client: httpx.AsyncClient) -> None:
    await _create(client)
    response = await client.post("/api/customers", json={**ADA, "email": "ADA@Example.com"})
    _problem(response, 409)
    listing = (await client.get("/api/customers")).json()
    assert listing["total"] == 1


async def test_unknown_customer_is_404_for_get_put_delete(client: httpx.AsyncClient) -> None:
    _problem(await client.get("/api/customers/999"), 404)
    _problem(await client.put("/api/customers/999", json=ADA), 404)
    _problem(await client.delete("/api/customers/999"), 404)


async def test_non_integer_id_is_422(client: httpx.AsyncClient) -> None:
    _problem(await client.get("/api/customers/abc"), 422)


async def test_list_paginates_with_total(client: httpx.AsyncClient) -> None:
    for n in range(5):
        await _create(client, email=f"c{n}@example.com")
    page = (await client.get("/api/customers", params={"limit": 2, "offset": 2})).json()
    assert page["total"] == 5
    assert [c["email"] for c in page["items"]] == ["c2@example.com", "c3@example.com"]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "x"}])
async def test_bad_pagination_is_422(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    _problem(await client.get("/api/customers", params=params), 422)


async def test_put_replaces_fully_and_bumps_version(client: httpx.AsyncClient) -> None:
    created = await _create(client)
    body = {"firstName": "Augusta", "lastName": "King", "email": "augusta@example.com"}
    response = await client.put(f"/api/customers/{created['id']}", json=body)
    assert response.status_code == 200
    updated = response.json()
    assert updated["version"] == 2 and response.headers["etag"] == '"2"'
    assert updated["phone"] is None
    assert updated["address"] == {
        "street": None,
        "city": None,
        "state": None,
        "postalCode": None,
        "country": None,
    }


@pytest.mark.parametrize("if_match", ['"1"', "1"])
async def test_put_with_matching_if_match_succeeds(
    client: httpx.AsyncClient, if_match: str
) -> None:
    created = await _create(client)
    response = await client.put(
        f"/api/customers/{created['id']}", json=ADA, headers={"If-Match": if_match}
    )
    assert response.status_code == 200


async def test_put_with_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    created = await _create(client)
    response = await client.put(
        f"/api/customers/{created['id']}",
        json={**ADA, "firstName": "Changed"},
        headers={"If-Match": '"7"'},
    )
    _problem(response, 412)
    stored = (await client.get(f"/api/customers/{created['id']}")).json()
    assert stored["firstName"] == "Ada" and stored["version"] == 1


async def test_put_to_an_email_of_another_customer_is_409(client: httpx.AsyncClient) -> None:
    await _create(client)
    other = await _create(client, email="other@example.com")
    response = await client.put(
        f"/api/customers/{other['id']}", json={**ADA, "email": "Ada@example.com"}
    )
    _problem(response, 409)


async def test_put_invalid_body_is_422(client: httpx.AsyncClient) -> None:
    created = await _create(client)
    _problem(await client.put(f"/api/customers/{created['id']}", json={"firstName": "x"}), 422)


async def test_delete_is_204_then_404(client: httpx.AsyncClient) -> None:
    created = await _create(client)
    response = await client.delete(f"/api/customers/{created['id']}")
    assert response.status_code == 204 and response.content == b""
    _problem(await client.get(f"/api/customers/{created['id']}"), 404)


async def test_deleted_customers_email_can_be_used_again(client: httpx.AsyncClient) -> None:
    created = await _create(client)
    await client.delete(f"/api/customers/{created['id']}")
    again = await _create(client)
    assert again["id"] != created["id"]


async def test_each_write_leaves_its_request_in_the_outbox_in_one_transaction(
    client: httpx.AsyncClient,
) -> None:
    # The CRM of this fixture is up, so requests may be delivered already; what must hold
    # is that a rejected write left none.
    await _create(client)
    await client.post("/api/customers", json={**ADA, "email": "ADA@example.com"})
    rows = (await client.get("/api/failed-requests", params={"limit": 500})).json()["items"]
    assert all(r["operation"] == "CREATE" and r["customerId"] == 1 for r in rows)


async def test_failed_requests_filters_are_validated(client: httpx.AsyncClient) -> None:
    _problem(await client.get("/api/failed-requests", params={"status": "lost"}), 422)
    _problem(await client.get("/api/failed-requests", params={"customerId": "x"}), 422)
    page = (await client.get("/api/failed-requests", params={"status": "dead"})).json()
    assert page == {"items": [], "total": 0}
    blank = await client.get("/api/failed-requests?status=&customerId=&limit=10&offset=0")
    assert blank.status_code == 200, blank.text


async def test_replay_and_discard_unknown_request_are_404(client: httpx.AsyncClient) -> None:
    _problem(await client.post("/api/failed-requests/999/replay"), 404)
    _problem(await client.delete("/api/failed-requests/999"), 404)


async def test_health_ready_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'crm_sync_failed_requests{status="dead"}' in metrics


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/api/customers/{customer_id}" in schema["paths"]
    assert (await client.get("/docs")).status_code == 200


async def test_api_key_is_required_when_set(make_settings: Any) -> None:
    app = create_app(make_settings(api_key="k3y"), run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as http:
            _problem(await http.get("/api/customers"), 401)
            _problem(await http.get("/api/customers", headers={"X-API-Key": "wrong"}), 401)
            _problem(await http.get("/api/failed-requests"), 401)
            ok = await http.get("/api/customers", headers={"X-API-Key": "k3y"})
            assert ok.status_code == 200
            assert (await http.get("/health")).status_code == 200


@pytest.mark.parametrize("customer_id", ["0", "-1", "99999999999999999999", "2147483648"])
async def test_out_of_range_ids_are_422_not_a_database_error(
    client: httpx.AsyncClient, customer_id: str
) -> None:
    _problem(await client.get(f"/api/customers/{customer_id}"), 422)
    _problem(await client.delete(f"/api/failed-requests/{customer_id}0000000000"), 422)


async def test_huge_offset_or_customer_filter_is_422(client: httpx.AsyncClient) -> None:
    _problem(await client.get("/api/customers", params={"offset": 10**12}), 422)
    _problem(await client.get("/api/failed-requests", params={"customerId": 10**12}), 422)


async def test_nul_character_is_422_and_nothing_is_stored(client: httpx.AsyncClient) -> None:
    body = {**ADA, "firstName": "A\x00da", "address": {"city": "Lon\x00don"}}
    errors = _problem(await client.post("/api/customers", json=body), 422)["errors"]
    assert {e["field"] for e in errors} == {"firstName", "address.city"}
    assert (await client.get("/api/customers")).json()["total"] == 0


async def test_wrong_json_types_are_422(client: httpx.AsyncClient) -> None:
    _problem(await client.post("/api/customers", json=[1, 2]), 422)
    _problem(await client.post("/api/customers", json={**ADA, "address": "London"}), 422)
    _problem(await client.post("/api/customers", json={**ADA, "phone": 12}), 422)


async def test_ready_is_503_when_the_database_is_unreachable(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/missing/dir/db.sqlite"
    app = create_app(Settings(database_url=url), run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as http:
            assert (await http.get("/health")).status_code == 200
            _problem(await http.get("/ready"), 503)
            # A write that cannot reach the database fails whole, as problem+json.
            _problem(await http.post("/api/customers", json=ADA), 503)
