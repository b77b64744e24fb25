"""The CRM client's wire (`CrmTransport`) against a scripted HTTP/1.1 server on loopback.

Each test scripts the server per connection (answer, chunk, close, stall, garble) and
counts the connections it accepts, so connection reuse is observed from the server's
side, not from the transport's internals. Every test runs on asyncio's loop and again on
uvloop's (the service runs under uvicorn, which picks uvloop).
"""

import asyncio
import gzip
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvloop
from support import free_port

from customer_service.crm.transport import CrmTransport

ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com", "city": "Zoë"}


@dataclass(frozen=True)
class Received:
    """One request as the server read it off the wire."""

    connection: int
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None


class Peer:
    """The server's end of one accepted connection (numbered from 1, in accept order)."""

    def __init__(
        self,
        server: "Server",
        number: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.number = number
        self.eof = False  # the client closed its end
        self.closed = False  # the server closed its end
        self.server = server
        self._reader = reader
        self._writer = writer

    async def request(self) -> Received | None:
        """The next request on this connection; None once the client has closed it."""
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ")
            headers = [(n.strip(), v.strip()) for n, _, v in (x.partition(":") for x in lines)]
            length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
            body = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof = True
            self.server.changed()
            return None
        received = Received(self.number, method, target, version, headers, body)
        self.server.received.append(received)
        self.server.changed()
        return received

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def answer(
        self,
        body: bytes = b"",
        *,
        status: str = "200 OK",
        version: str = "HTTP/1.1",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A whole answer with a Content-Length."""
        lines = [f"{version} {status}", *(f"{n}: {v}" for n, v in headers)]
        lines.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    async def echo(self, request: Received, **options: Any) -> None:
        """An answer naming the connection and the request, so answers cannot be swapped."""
        body = {
            "connection": self.number,
            "method": request.method,
            "target": request.target,
            "tag": request.header("X-Tag"),
        }
        await self.answer(json.dumps(body).encode(), **options)

    async def echo_all(self) -> None:
        while (request := await self.request()) is not None:
            await self.echo(request)


Handler = Callable[[Peer], Awaitable[None]]


async def echo_all(peer: Peer) -> None:
    await peer.echo_all()


class Server:
    """An HTTP/1.1 server on 127.0.0.1 whose every connection runs `handler(peer)`."""

    def __init__(self, handler: Handler = echo_all) -> None:
        self.peers: list[Peer] = []
        self.received: list[Received] = []
        self.errors: list[BaseException] = []
        self._handler = handler
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.AbstractServer | None = None
        self.url = ""

    @property
    def accepts(self) -> int:
        return len(self.peers)

    def changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, check: Callable[[], bool], within: float = 2.0) -> None:
        """Wait until `check()` holds (re-checked at each accept, request and close)."""
        try:
            async with asyncio.timeout(within):
                while not check():
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"the server did not reach that state within {within}s") from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(self, len(self.peers) + 1, reader, writer)
        self.peers.append(peer)
        self.changed()
        try:
            await self._handler(peer)
        except (asyncio.CancelledError, ConnectionError):
            pass  # stopped by `__aexit__`, or the client went away mid-send
        except Exception as exc:
            self.errors.append(exc)
        finally:
            writer.close()
            peer.closed = True
            self.changed()

    async def __aenter__(self) -> "Server":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        if exc_info[0] is None:
            assert not self.errors, f"the server's script failed: {self.errors!r}"


def client_for(
    url: str, *, timeout: float = 2.0, transport: CrmTransport | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, transport=transport or CrmTransport(), timeout=httpx.Timeout(timeout)
    )


async def once_then(peer: Peer, then: Callable[[Peer], Awaitable[None]]) -> None:
    """Answer the connection's first request, then follow the script `then`."""
    first = await peer.request()
    assert first is not None
    await peer.echo(first)
    await then(peer)


async def read_one_and_close(peer: Peer) -> None:
    """Read one request and close the connection without a byte of answer."""
    await peer.request()


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def event_loop_policy(loop_name: str) -> asyncio.AbstractEventLoopPolicy:
    """pytest-asyncio's hook: the module runs once on each loop."""
    if loop_name == "uvloop":
        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()


@pytest.fixture(autouse=True)
async def _runs_on_the_named_loop(loop_name: str) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop) is (loop_name == "uvloop")


# --- keep-alive


async def test_sequential_requests_share_one_kept_connection() -> None:
    async with Server() as server, client_for(server.url) as client:
        for n in range(5):
            response = await client.get(f"/call/{n}")
            assert response.status_code == 200
            assert response.json()["target"] == f"/call/{n}"
            assert response.json()["connection"] == 1
        assert server.accepts == 1


async def test_concurrent_requests_get_connections_and_answers_of_their_own() -> None:
    count = 6

    async def answer_when_all_are_in(peer: Peer) -> None:
        # Hold each answer until every request is in: only `count` connections get there.
        while (request := await peer.request()) is not None:
            await peer.server.until(lambda: len(peer.server.received) % count == 0)
            await peer.echo(request)

    async with Server(answer_when_all_are_in) as server, client_for(server.url) as client:
        for round_ in range(2):
            tags = [f"round-{round_}-request-{n}" for n in range(count)]
            responses = await asyncio.gather(
                *(client.get(f"/echo/{tag}", headers={"X-Tag": tag}) for tag in tags)
            )
            assert [r.json()["tag"] for r in responses] == tags
            assert [r.json()["target"] for r in responses] == [f"/echo/{tag}" for tag in tags]
            assert {r.json()["connection"] for r in responses} == set(range(1, count + 1))
        # The second round found the first round's connections idle and reused them all.
        assert server.accepts == count


async def test_idle_connections_are_kept_per_origin() -> None:
    async with Server() as a, Server() as b, httpx.AsyncClient(transport=CrmTransport()) as client:
        for n in range(2):
            for server, name in ((a, "a"), (b, "b")):
                response = await client.get(f"{server.url}/{name}{n}")
                assert response.json()["target"] == f"/{name}{n}"
        assert [r.target for r in a.received] == ["/a0", "/a1"]
        assert [r.target for r in b.received] == ["/b0", "/b1"]
        assert (a.accepts, b.accepts) == (1, 1)


# --- what goes on the wire, and what comes back


async def test_request_line_headers_and_body_arrive_as_sent() -> None:
    async with Server() as server, client_for(server.url) as client:
        response = await client.post(
            "/api/crm/customers",
            params={"externalId": "a b/ö", "limit": 2},
            json=ADA,
            headers=[("Idempotency-Key", "key-1"), ("X-Multi", "one"), ("X-Multi", "two")],
        )
        assert response.status_code == 200
        await client.get("/api/crm/customers/7")
    post, get = server.received
    assert (post.method, post.target, post.version) == (
        "POST",
        "/api/crm/customers?externalId=a+b%2F%C3%B6&limit=2",
        "HTTP/1.1",
    )
    assert post.header("Host") == server.url.removeprefix("http://")
    assert post.header("Idempotency-Key") == "key-1"
    assert [v for n, v in post.headers if n == "X-Multi"] == ["one", "two"]
    assert post.header("Content-Type") == "application/json"
    assert json.loads(post.body) == ADA
    assert post.header("Content-Length") == str(len(post.body))  # bytes, not characters
    assert len(post.body) > len(post.body.decode())
    # A request without a body: no length, and nothing after the head (the GET parsed whole).
    assert (get.method, get.target, get.header("Content-Length"), get.body) == (
        "GET",
        "/api/crm/customers/7",
        None,
        b"",
    )
    assert get.connection == 1


async def test_large_bodies_cross_whole_both_ways() -> None:
    payload = os.urandom(1 << 20)

    async def answer_in_pieces(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n\r\n".encode())
            for start in range(0, len(payload), 60_000):
                await peer.send(payload[start : start + 60_000])

    async with Server(answer_in_pieces) as server, client_for(server.url) as client:
        for _ in range(2):
            response = await client.put("/blob", content=payload)
            assert response.content == payload
        assert [r.body == payload for r in server.received] == [True, True]
        assert server.accepts == 1


async def test_a_chunked_answer_is_decoded_and_its_connection_kept() -> None:
    async def chunked(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(
                b"HTTP/1.1 200 OK\r\nX-Part: one\r\nTransfer-Encoding: chunked\r\n"
                b"X-Part: two\r\n\r\n"
            )
            for chunk in (b"5\r\nhello\r\n", b"1;note=x\r\n \r\n", b"5\r\nworld\r\n"):
                await peer.send(chunk)
            await peer.send(b"0\r\n\r\n")

    async with Server(chunked) as server, client_for(server.url) as client:
        for _ in range(2):
            response = await client.get("/chunked")
            assert response.text == "hello world"
            assert response.headers.get_list("X-Part") == ["one", "two"]
        assert server.accepts == 1


async def test_a_gzip_answer_is_decoded_by_httpx() -> None:
    async def gzipped(peer: Peer) -> None:
        while await peer.request() is not None:
            body = gzip.compress(json.dumps(ADA).encode())
            await peer.answer(
                body, headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
            )

    async with Server(gzipped) as server, client_for(server.url) as client:
        response = await client.get("/gzip")
        assert response.json() == ADA
    assert server.received[0].header("Accept-Encoding") == "gzip, deflate"


@pytest.mark.parametrize(
    ("version", "headers", "kept"),
    [
        ("HTTP/1.1", [("Connection", "close")], False),
        ("HTTP/1.0", [], False),
        ("HTTP/1.0", [("Connection", "keep-alive")], True),
    ],
)
async def test_an_answer_is_kept_only_when_it_says_so(
    version: str, headers: list[tuple[str, str]], kept: bool
) -> None:
    async def answer_as(peer: Peer) -> None:
        # The server itself keeps every connection open: only the client decides.
        while (request := await peer.request()) is not None:
            await peer.echo(request, version=version, headers=headers)

    async with Server(answer_as) as server, client_for(server.url) as client:
        first = await client.get("/one")
        second = await client.get("/two")
        assert (first.status_code, second.status_code) == (200, 200)
        assert [first.json()["connection"], second.json()["connection"]] == [1, 1 if kept else 2]
        if not kept:
            await server.until(lambda: server.peers[0].eof)  # and the client closed it


# --- connections that go away


async def test_a_kept_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def answer_once_then_close(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.echo(request)

    async with Server(answer_once_then_close) as server, client_for(server.url) as client:
        assert (await client.get("/one")).json()["connection"] == 1
        await server.until(lambda: server.peers[0].closed)
        second = await client.get("/two")
        assert second.json()["connection"] == 2
        assert server.accepts == 2


async def test_a_reused_connection_closed_before_any_answer_is_retried_once_on_a_new_one() -> None:
    async def first_connection_drops_its_second_request(peer: Peer) -> None:
        if peer.number == 1:
            await once_then(peer, read_one_and_close)
        else:
            await peer.echo_all()

    async with (
        Server(first_connection_drops_its_second_request) as server,
        client_for(server.url) as client,
    ):
        await client.get("/one")
        second = await client.post("/two", json=ADA, headers={"Idempotency-Key": "key-2"})
        assert second.status_code == 200
        assert second.json()["connection"] == 2
    sent = [r for r in server.received if r.header("Idempotency-Key") == "key-2"]
    assert [r.connection for r in sent] == [1, 2]
    assert sent[0].body == sent[1].body
    assert server.accepts == 2


async def test_the_stale_retry_happens_once_only() -> None:
    async def drop_the_retry_too(peer: Peer) -> None:
        if peer.number == 1:
            await once_then(peer, read_one_and_close)
        else:
            await read_one_and_close(peer)

    async with Server(drop_the_retry_too) as server, client_for(server.url) as client:
        await client.get("/one")
        with pytest.raises(httpx.ReadError):
            await client.get("/two")
        assert [r.connection for r in server.received if r.target == "/two"] == [1, 2]
        assert server.accepts == 2


async def test_a_fresh_connection_closed_before_any_answer_is_not_retried() -> None:
    async with Server(read_one_and_close) as server, client_for(server.url) as client:
        with pytest.raises(httpx.ReadError):
            await client.post("/one", json=ADA)
        assert server.accepts == 1
        assert len(server.received) == 1


async def test_a_connection_broken_mid_answer_raises_read_error_and_is_replaced() -> None:
    async def break_the_second_answer(peer: Peer) -> None:
        async def half_an_answer(peer: Peer) -> None:
            await peer.request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")

        if peer.number == 1:
            await once_then(peer, half_an_answer)
        else:
            await peer.echo_all()

    # One connection slot: an error that kept its slot would stall the third request.
    transport = CrmTransport(max_connections=1)
    async with (
        Server(break_the_second_answer) as server,
        client_for(server.url, transport=transport) as client,
    ):
        await client.get("/one")
        with pytest.raises(httpx.ReadError):
            await client.get("/two")
        # Part of an answer came back: the request is not sent again.
        assert [r.connection for r in server.received if r.target == "/two"] == [1]
        third = await client.get("/three")
        assert third.json()["connection"] == 2
        assert server.accepts == 2


async def test_no_answer_raises_read_timeout_in_time_and_the_connection_is_dropped() -> None:
    async def never_answer_the_first(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            if request.target != "/stall":
                await peer.echo(request)

    transport = CrmTransport(max_connections=1)
    async with (
        Server(never_answer_the_first) as server,
        client_for(server.url, timeout=0.3, transport=transport) as client,
    ):
        started = time.monotonic()
        # (the outer bound turns a transport that ignores the read timeout into a failure)
        async with asyncio.timeout(2):
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/stall")
        elapsed = time.monotonic() - started
        assert 0.29 <= elapsed < 1.3
        await server.until(lambda: server.peers[0].eof)  # the client closed it
        after = await client.get("/after")
        assert after.json()["connection"] == 2
        assert server.accepts == 2


async def test_nothing_listening_raises_connect_error() -> None:
    async with client_for(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
    ],
    ids=["not-http", "bad-status", "bad-length"],
)
async def test_an_answer_that_is_not_http_raises_remote_protocol_error(answer: bytes) -> None:
    async def garble_the_first(peer: Peer) -> None:
        if peer.number == 1:
            await peer.request()
            await peer.send(answer)
            await peer.request()  # until the client drops the connection
        else:
            await peer.echo_all()

    async with Server(garble_the_first) as server, client_for(server.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/one")
        await server.until(lambda: server.peers[0].eof)
        assert (await client.get("/two")).json()["connection"] == 2
        assert server.accepts == 2


async def test_bytes_on_an_idle_connection_get_it_dropped() -> None:
    gate = asyncio.Event()

    async def babble(peer: Peer) -> None:
        await gate.wait()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await peer.request()  # until the client drops the connection

    async def script(peer: Peer) -> None:
        await (once_then(peer, babble) if peer.number == 1 else peer.echo_all())

    async with Server(script) as server, client_for(server.url) as client:
        assert (await client.get("/one")).json()["connection"] == 1
        gate.set()  # the answer is in: now bytes nobody asked for
        await server.until(lambda: server.peers[0].eof)
        assert (await client.get("/two")).json()["connection"] == 2


# --- cancellation and closing


async def test_a_cancelled_request_leaves_the_pool_usable() -> None:
    async def never_answer_slow(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            if request.target != "/slow":
                await peer.echo(request)

    transport = CrmTransport(max_connections=1)
    async with (
        Server(never_answer_slow) as server,
        client_for(server.url, transport=transport) as client,
    ):
        await client.get("/one")
        slow = asyncio.create_task(client.get("/slow"))
        await server.until(lambda: len(server.received) == 2)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        await server.until(lambda: server.peers[0].eof)  # the half-used connection is dropped
        after = await client.get("/after")
        assert after.json()["connection"] == 2
        assert server.accepts == 2


async def test_a_closed_client_fails_at_once_and_drops_its_idle_connections() -> None:
    transport = CrmTransport()
    async with Server() as server:
        client = client_for(server.url, transport=transport)
        await client.get("/one")
        await client.aclose()
        await server.until(lambda: server.peers[0].eof)
        async with asyncio.timeout(2):
            # httpx itself refuses a closed client (a RuntimeError, not an httpx error)...
            with pytest.raises(RuntimeError, match="client has been closed"):
                await client.get("/two")
            # ...and the closed transport refuses any other client at once.
            async with httpx.AsyncClient(base_url=server.url, transport=transport) as other:
                with pytest.raises(httpx.ConnectError):
                    await other.get("/three")
        assert server.accepts == 1


# --- defects found by these tests, fixed in the transport


async def test_a_request_in_flight_at_close_does_not_leave_its_connection_open() -> None:
    gate = asyncio.Event()

    async def answer_when_let(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await gate.wait()
            await peer.echo(request)

    async with Server(answer_when_let) as server:
        client = client_for(server.url)
        in_flight = asyncio.create_task(client.get("/one"))
        await server.until(lambda: len(server.received) == 1)
        await client.aclose()
        gate.set()
        assert (await in_flight).status_code == 200
        await server.until(lambda: server.peers[0].eof, within=0.5)


async def test_an_answer_delimited_by_closing_the_connection_is_read_whole() -> None:
    async def until_close(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe whole body")

    async with Server(until_close) as server, client_for(server.url) as client:
        assert (await client.get("/")).text == "the whole body"


async def test_an_unasked_protocol_upgrade_raises_remote_protocol_error() -> None:
    async def upgrade_the_first(peer: Peer) -> None:
        if peer.number == 1:
            await peer.request()
            await peer.send(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\n\r\n\x81\x05hello"
            )
        await peer.echo_all()  # (a transport that keeps the connection gets answers here)

    async with Server(upgrade_the_first) as server, client_for(server.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/one")
        assert (await client.get("/two")).json()["connection"] == 2


async def test_a_second_answer_to_one_request_is_not_mixed_into_the_first() -> None:
    async def answer_twice(peer: Peer) -> None:
        while await peer.request() is not None:
            # One write: on loopback the client reads both answers at once.
            await peer.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-First: 1\r\n\r\nfirst"
                b"HTTP/1.1 500 Oops\r\nContent-Length: 6\r\nX-Second: 1\r\n\r\nsecond"
            )

    async with Server(answer_twice) as server, client_for(server.url) as client:
        response = await client.get("/one")
        assert (response.status_code, response.content) == (200, b"first")
        assert "X-Second" not in response.headers
        # The connection that carried bytes nobody asked for is not used again.
        await client.get("/two")
        assert server.accepts == 2
