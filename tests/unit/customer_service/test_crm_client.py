"""The CRM client against a scripted HTTP server on loopback (aiohttp's test server: no
CRM process). Each test says what the server answers and reads what it received."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from customer_service.config import Settings
from customer_service.crm.client import CrmClient, CrmUnreachable
from customer_service.request_id import current_request_id
from customer_service.sync.hold import HoldKind

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Scripted:
    """A server whose answer each test sets; it keeps every request it received."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, str], bytes]] = []
        self.answer: Handler = self._no_content
        self.server = TestServer(web.Application(), host="127.0.0.1")
        self.server.app.router.add_route("*", "/{tail:.*}", self._handle)

    @staticmethod
    async def _no_content(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append((request.method, request.path_qs, dict(request.headers), body))
        return await self.answer(request)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def client(self, **settings: Any) -> CrmClient:
        values: dict[str, Any] = {"crm_base_url": self.url, "crm_timeout_seconds": 0.5}
        return CrmClient(Settings(**(values | settings)))


@pytest.fixture
async def crm() -> AsyncIterator[Scripted]:
    scripted = Scripted()
    await scripted.server.start_server()
    try:
        yield scripted
    finally:
        await scripted.server.close()


@pytest.fixture
async def client(crm: Scripted) -> AsyncIterator[CrmClient]:
    client = crm.client(crm_api_token="s3cret")
    try:
        yield client
    finally:
        await client.aclose()


def answer(status: int, body: Any = None, **headers: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        if body is None:
            return web.Response(status=status, headers=headers)
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/html")
        return web.json_response(body, status=status, headers=headers)

    return handle


async def test_create_sends_its_body_idempotency_key_and_bearer_token(
    crm: Scripted, client: CrmClient
) -> None:
    crm.answer = answer(201, {"id": "c1"})
    result = await client.create({"externalId": "1"}, "key-1")
    assert result.status == 201 and result.body == {"id": "c1"}
    method, path, headers, body = crm.received[-1]
    assert (method, path) == ("POST", "/api/crm/customers")
    assert json.loads(body) == {"externalId": "1"}
    assert headers["Idempotency-Key"] == "key-1"
    assert headers["Authorization"] == "Bearer s3cret"


async def test_no_token_no_authorization_header(crm: Scripted) -> None:
    client = crm.client()
    try:
        assert (await client.remove("c1", "k")).ok
    finally:
        await client.aclose()
    method, path, headers, _ = crm.received[-1]
    assert (method, path) == ("DELETE", "/api/crm/customers/c1")
    assert "Authorization" not in headers


async def test_a_base_url_with_a_path_keeps_it(crm: Scripted) -> None:
    client = crm.client(crm_base_url=crm.url + "/tenant/7/")
    try:
        await client.replace("c1", {}, "k")
    finally:
        await client.aclose()
    assert crm.received[-1][1] == "/tenant/7/api/crm/customers/c1"


async def test_no_answer_in_time_is_unreachable(crm: Scripted, client: CrmClient) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(status=200)

    crm.answer = slow
    with pytest.raises(CrmUnreachable) as caught:
        await client.replace("c1", {}, "k")
    assert caught.value.kind is HoldKind.UNREACHABLE
    assert "in time" in str(caught.value) or "Timeout" in str(caught.value)


async def test_connection_refused_is_unreachable() -> None:
    from support import free_port

    client = CrmClient(Settings(crm_base_url=f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(CrmUnreachable) as caught:
            await client.get("c1")
    finally:
        await client.aclose()
    assert caught.value.kind is HoldKind.UNREACHABLE
    assert "Cannot connect" in str(caught.value)


async def test_retry_after_header_and_the_crm_detail_are_kept(
    crm: Scripted, client: CrmClient
) -> None:
    crm.answer = answer(503, {"detail": "down"}, **{"Retry-After": "30"})
    result = await client.create({}, "k")
    assert not result.ok
    assert result.retry_after == "30"
    assert result.describe() == "CRM answered 503: down"


async def test_an_html_error_page_is_described_as_not_json(
    crm: Scripted, client: CrmClient
) -> None:
    crm.answer = answer(502, "<html><body><h1>502 Bad Gateway</h1></body></html>")
    result = await client.create({}, "k")
    assert result.body is None
    assert result.describe() == "CRM answered 502 with a body that is not JSON (text/html)"


async def test_reads_carry_an_idempotency_key_too(crm: Scripted, client: CrmClient) -> None:
    crm.answer = answer(200, {"items": [], "total": 0})
    await client.find("42")
    await client.find("42")
    keys = [headers["Idempotency-Key"] for _, _, headers, _ in crm.received]
    assert all(keys) and keys[0] != keys[1]
    assert crm.received[-1][1] == "/api/crm/customers?externalId=42&limit=100"


async def test_probe_gives_the_answer_or_why_there_was_none(
    crm: Scripted, client: CrmClient
) -> None:
    crm.answer = answer(503)
    probed = await client.probe()
    assert not isinstance(probed, CrmUnreachable) and probed.status == 503
    crm.answer = answer(200, {"items": [], "total": 0})
    probed = await client.probe()
    assert not isinstance(probed, CrmUnreachable) and probed.ok
    assert crm.received[-1][1] == "/api/crm/customers?limit=1"


async def test_crm_calls_carry_the_current_request_id(crm: Scripted, client: CrmClient) -> None:
    crm.answer = answer(200, {"id": "c1"})
    token = current_request_id.set("req-7")
    try:
        await client.get("c1")
    finally:
        current_request_id.reset(token)
    assert crm.received[-1][2]["X-Request-ID"] == "req-7"
    await client.get("c1")
    assert "X-Request-ID" not in crm.received[-1][2]


async def test_cookies_of_the_crm_are_not_sent_back(crm: Scripted, client: CrmClient) -> None:
    async def with_cookie(request: web.Request) -> web.StreamResponse:
        response = web.json_response({"id": "c1"})
        response.set_cookie("session", "abc")
        return response

    crm.answer = with_cookie
    await client.get("c1")
    await client.get("c1")
    assert "Cookie" not in crm.received[-1][2]


async def test_connections_are_kept_between_calls(crm: Scripted, client: CrmClient) -> None:
    peers: set[Any] = set()

    async def note_peer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.json_response({"id": "c1"})

    crm.answer = note_peer
    for _ in range(5):
        await client.get("c1")
    assert len(peers) == 1
