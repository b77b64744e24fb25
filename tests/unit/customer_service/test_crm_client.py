"""The httpx CRM client, against respx (unit level: no CRM process)."""

import httpx
import pytest
import respx

from customer_service.config import Settings
from customer_service.crm.client import CrmClient, CrmUnreachable, build_http_client
from customer_service.request_id import current_request_id

BASE = "http://crm.test"
# The client has a transport of its own (`crm.transport`): mock at httpx's level, above it.
pytestmark = pytest.mark.respx(using="httpx")


@pytest.fixture
async def client() -> CrmClient:
    settings = Settings(crm_base_url=BASE, crm_api_token="s3cret", crm_timeout_seconds=0.5)
    return CrmClient(build_http_client(settings))


async def test_create_sends_idempotency_key_and_bearer_token(
    client: CrmClient, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(f"{BASE}/api/crm/customers").mock(
        return_value=httpx.Response(201, json={"id": "c1"})
    )
    answer = await client.create({"externalId": "1"}, "key-1")
    assert answer.status == 201 and answer.body == {"id": "c1"}
    sent = route.calls.last.request
    assert sent.headers["Idempotency-Key"] == "key-1"
    assert sent.headers["Authorization"] == "Bearer s3cret"


async def test_no_token_no_authorization_header(respx_mock: respx.MockRouter) -> None:
    client = CrmClient(build_http_client(Settings(crm_base_url=BASE)))
    route = respx_mock.delete(f"{BASE}/api/crm/customers/c1").mock(return_value=httpx.Response(204))
    answer = await client.remove("c1", "k")
    assert answer.ok
    assert "Authorization" not in route.calls.last.request.headers


async def test_timeout_is_unreachable(client: CrmClient, respx_mock: respx.MockRouter) -> None:
    respx_mock.put(f"{BASE}/api/crm/customers/c1").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(CrmUnreachable):
        await client.replace("c1", {}, "k")


async def test_retry_after_header_is_kept(client: CrmClient, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(f"{BASE}/api/crm/customers").mock(
        return_value=httpx.Response(503, headers={"Retry-After": "30"}, json={"detail": "down"})
    )
    answer = await client.create({}, "k")
    assert not answer.ok
    assert answer.retry_after == "30"
    assert answer.describe() == "CRM answered 503: down"


async def test_reads_carry_an_idempotency_key_too(
    client: CrmClient, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.get(f"{BASE}/api/crm/customers").mock(
        return_value=httpx.Response(200, json={"items": [], "total": 0})
    )
    await client.find("42")
    await client.find("42")
    keys = [call.request.headers["Idempotency-Key"] for call in route.calls]
    assert all(keys) and keys[0] != keys[1]
    assert route.calls.last.request.url.params["externalId"] == "42"


async def test_ping_is_false_on_5xx_and_true_on_200(
    client: CrmClient, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.get(f"{BASE}/api/crm/customers")
    route.mock(return_value=httpx.Response(503))
    assert not await client.ping()
    route.mock(return_value=httpx.Response(200, json={"items": [], "total": 0}))
    assert await client.ping()


async def test_crm_calls_carry_the_current_request_id(
    client: CrmClient, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.get(f"{BASE}/api/crm/customers/c1").mock(return_value=httpx.Response(200))
    token = current_request_id.set("req-7")
    try:
        await client.get("c1")
    finally:
        current_request_id.reset(token)
    assert route.calls.last.request.headers["X-Request-ID"] == "req-7"
    await client.get("c1")
    assert "X-Request-ID" not in route.calls.last.request.headers
