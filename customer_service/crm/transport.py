"""The CRM client's HTTP/1.1 transport: keep-alive connections on asyncio, parsed by httptools.

httpx's default transport (httpcore over anyio, parsed by h11) cost about 0.8 ms of CPU a
call on this machine, where httpx itself costs about 0.1 ms: profiled, it was the largest
single cost of a delivery once the database work was group-committed (`bench/README.md`).
This transport keeps httpx's client (its API, timeouts, errors, headers and decoding) and
replaces only the wire: one `asyncio.Protocol` per connection, responses parsed by
httptools (the C parser uvicorn uses), idle connections kept for reuse.

- **Errors are httpx's.** No connection: `httpx.ConnectError` or `ConnectTimeout`; no
  complete answer in time: `ReadTimeout`; the connection broken mid-answer: `ReadError`;
  an answer that is not HTTP: `RemoteProtocolError`; no free connection in time:
  `PoolTimeout`.
- **A reused connection that the server had closed** (its keep-alive timeout ran out as
  we sent) is retried once on a fresh connection when no byte of an answer came back.
  Every CRM call carries an `Idempotency-Key`, so even a POST is safe to send again.
- **Idle connections** are dropped after `keepalive_expiry` seconds (4 s, under the 5 s
  most servers keep one), and at once when the server closes them.
- **Not supported:** HTTP/2, proxies, streaming bodies (every CRM answer is a JSON
  document read whole), `Expect: 100-continue`. HTTPS is (certifi's roots, as httpx).
"""

import asyncio
import ssl
import time
from collections import deque
from typing import Any

import httptools
import httpx

Origin = tuple[str, str, int]


class _Stale(Exception):
    """A reused connection was closed before any byte of the answer arrived."""


class _Unasked(Exception):
    """Bytes after the answer: a second answer to one request."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: Any = None  # asyncio's or uvloop's transport
        self.closed = False
        self.idle_since = time.monotonic()
        self._answer: asyncio.Future[None] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._received = False
        self._headers_done = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.status = 0
        self._head = False  # the request in flight is a HEAD: its answer has no body
        self.keep_alive = False

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self._answer is None or self._answer.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the CRM asked for a protocol upgrade"))
        except httptools.HttpParserError as exc:
            if self._answer.done():
                self.close()  # bytes after the answer: the connection cannot be trusted
            else:
                self._fail(httpx.RemoteProtocolError(f"malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._received and self._delimited_by_close():
            self.keep_alive = False
            self._complete()
        elif self._received:
            self._fail(httpx.ReadError("the CRM closed the connection mid-answer"))
        else:
            self._fail(_Stale())

    # --- httptools callbacks
    def on_message_begin(self) -> None:
        if self._answer is not None and self._answer.done():
            raise _Unasked  # stops the parser; `data_received` closes the connection

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._head:
            self.on_message_complete()  # whatever its Content-Length says, no body follows

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status == 101 or self._parser.should_upgrade():
            self._fail(httpx.RemoteProtocolError("the CRM asked for a protocol upgrade"))
            return
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints)
            self._headers, self._body, self._headers_done = [], [], False
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(None)

    def _delimited_by_close(self) -> bool:
        """Headers done, and neither a length nor chunks: the body ends with the connection."""
        if self._parser is None or not self._headers_done:
            return False
        names = {name.lower() for name, _ in self._headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # --- use
    def _fail(self, error: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(
        self, data: bytes, read_within: float | None, head: bool = False
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send one request; its status, headers and whole body."""
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._answer = self._loop.create_future()
        self._received = False
        self._headers_done = False
        self._head = head
        self._headers, self._body = [], []
        try:
            self.transport.write(data)
            async with asyncio.timeout(read_within):
                await self._answer
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout("the CRM did not answer in time") from None
        except BaseException:
            self.close()  # cancelled or failed mid-exchange: never reuse it
            raise
        finally:
            self._parser = None
        self.idle_since = time.monotonic()
        return self.status, self._headers, b"".join(self._body)


class CrmTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        verify: bool = True,
        max_connections: int = 200,
        max_idle: int = 50,
        keepalive_expiry: float = 4.0,
    ) -> None:
        self._verify = verify
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the CRM client is closed", request=request)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        url = request.url
        origin: Origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        data = _serialize(request, await request.aread())
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free CRM connection in time", request=request) from None
        try:
            return await self._exchange(request, origin, data, timeouts)
        finally:
            self._slots.release()

    async def _exchange(
        self, request: httpx.Request, origin: Origin, data: bytes, timeouts: dict[str, Any]
    ) -> httpx.Response:
        head = request.method == "HEAD"
        connection = self._take_idle(origin)
        reused = connection is not None
        if connection is None:
            connection = await self._connect(request, origin, timeouts.get("connect"))
        try:
            status, headers, body = await connection.exchange(data, timeouts.get("read"), head)
        except _Stale:
            if not reused:
                raise httpx.ReadError("the CRM closed the connection", request=request) from None
            # The server closed an idle connection as we sent: once more, on a new one.
            connection = await self._connect(request, origin, timeouts.get("connect"))
            try:
                status, headers, body = await connection.exchange(data, timeouts.get("read"), head)
            except _Stale:
                raise httpx.ReadError("the CRM closed the connection", request=request) from None
        if connection.keep_alive and not connection.closed and not self._closed:
            self._put_idle(origin, connection)
        else:
            connection.close()
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(body),
            extensions={"http_version": b"HTTP/1.1"},
        )

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to expire
            if not connection.closed and now - connection.idle_since < self._expiry:
                return connection
            connection.close()
        return None

    def _put_idle(self, origin: Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, deque())
        idle.append(connection)
        while len(idle) > self._max_idle:
            idle.popleft().close()

    async def _connect(
        self, request: httpx.Request, origin: Origin, connect_within: float | None
    ) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = self._ssl_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(connect_within):
                transport, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{host}:{port}: {exc}", request=request) from exc
        # uvloop may call `connection_made` only after this returns.
        connection.transport = transport
        return connection

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if self._verify:
                import certifi

                self._ssl = ssl.create_default_context(cafile=certifi.where())
            else:
                self._ssl = ssl.create_default_context()
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        return self._ssl

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    """The request's bytes on the wire (httpx has set Host, and Content-Length for a body)."""
    target = request.url.raw_path
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in request.headers.raw]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
