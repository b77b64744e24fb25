"""A plain-HTTP CONNECT proxy on loopback, in the test's own event loop.

It answers `CONNECT host:port HTTP/1.1` with `HTTP/1.1 200 Connection established`, then
pipes bytes both ways (TLS passes through untouched), and records each CONNECT target,
so a test can tell that a client really went through it. Only loopback targets are
tunnelled; anything else is refused (403), as is any method but CONNECT (405).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HEAD_LIMIT = 16 * 1024
READ_SIZE = 64 * 1024


class ConnectProxy:
    """Start it, point a client's `HTTPS_PROXY` at `url`, read `targets` afterwards."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            await self._tunnel(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if len(head) > HEAD_LIMIT:
            await _answer(writer, b"431 Request Header Fields Too Large")
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or parts[0].upper() != "CONNECT":
            await _answer(writer, b"405 Method Not Allowed")
            return
        target = parts[1]
        self.targets.append(target)
        host, _, port_text = target.rpartition(":")
        host = host.strip("[]")
        if host not in LOOPBACK_HOSTS or not port_text.isdigit():
            await _answer(writer, b"403 Forbidden")
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port_text))
        except OSError:
            await _answer(writer, b"502 Bad Gateway")
            return
        self._writers.add(upstream_writer)
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            self._writers.discard(upstream_writer)
            upstream_writer.close()


async def _answer(writer: asyncio.StreamWriter, status: bytes) -> None:
    writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until the source ends, then pass the end on (a half-close where possible)."""
    try:
        while data := await source.read(READ_SIZE):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        if sink.can_write_eof() and not sink.is_closing():
            with contextlib.suppress(OSError):
                sink.write_eof()
        else:
            sink.close()


@contextlib.asynccontextmanager
async def connect_proxy() -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy()
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
