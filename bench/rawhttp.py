"""A minimal HTTP/1.1 client for the loads: keep-alive connections, one request at a time each.

The benchmark runs on the machine it measures, so its own load generator competes with the
services for the CPU. httpx spends about 3 ms of CPU per request here, as much as the
services themselves; this client, a few dozen lines over asyncio streams, spends a tenth of
that, the way wrk would (which is not installed everywhere). It speaks only what the loads
need: requests with a JSON body or none, answers with a `Content-Length` (both services send
one), over loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class RawHttpError(Exception):
    """The connection failed or the answer was not one this client reads."""


@dataclass(frozen=True)
class RawAnswer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """One keep-alive connection to `base_url` (http://host:port)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"not an http://host:port URL: {base_url!r}")
        self.host, self.port = parts.hostname, parts.port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> RawAnswer:
        """Send one request and read its whole answer; reconnects once if the server had
        closed the idle connection."""
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(payload)}")
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        message = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
        for attempt in (1, 2):
            reader, writer = await self._connect()
            try:
                writer.write(message)
                return await _read_answer(reader)
            except (OSError, asyncio.IncompleteReadError, RawHttpError) as error:
                await self.close()
                if attempt == 2 or not isinstance(error, asyncio.IncompleteReadError):
                    raise RawHttpError(f"{method} {path}: {error!r}") from error
        raise AssertionError("unreachable")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            try:
                self._streams = await asyncio.open_connection(self.host, self.port)
            except OSError as error:
                raise RawHttpError(f"cannot connect to {self.host}:{self.port}: {error}") from error
        return self._streams

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()


@asynccontextmanager
async def connection(base_url: str) -> AsyncIterator[RawConnection]:
    """A connection closed when the block ends."""
    opened = RawConnection(base_url)
    try:
        yield opened
    finally:
        await opened.close()


async def _read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    status_line = await reader.readuntil(b"\r\n")
    try:
        status = int(status_line.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise RawHttpError(f"not an HTTP status line: {status_line!r}") from None
    length = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            raise RawHttpError("chunked answers are not supported")
    body = await reader.readexactly(length) if length else b""
    return RawAnswer(status, body)


class ConnectionPool:
    """Keep-alive connections to one server, as many as are in use at once."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._idle: list[RawConnection] = []
        self._all: list[RawConnection] = []

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> RawAnswer:
        conn = self._idle.pop() if self._idle else self._open()
        try:
            answer = await conn.request(method, path, body, headers)
        except BaseException:
            await conn.close()
            self._all.remove(conn)
            raise
        self._idle.append(conn)
        return answer

    def _open(self) -> RawConnection:
        conn = RawConnection(self.base_url)
        self._all.append(conn)
        return conn

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()
        self._idle.clear()
