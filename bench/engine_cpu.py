"""The delivery engine's own CPU per customer, in this process, on PostgreSQL.

`python bench/engine_cpu.py` makes a fresh database (`BENCH_ENGINE_DATABASE`, default
`crm_sync_bench_engine` on the server of `BENCH_DATABASE_URL`), writes
`BENCH_ENGINE_CUSTOMERS` (6,000) customers with a pending CREATE each (`seed.py`, as
phase 3's backlog), and kicks them
into a `DeliveryEngine` as the API's writes would: groups of `BENCH_ENGINE_GROUP` (15) at
`BENCH_ENGINE_RATE` (600) customers a second, after a warm-up of 600. It prints this
process's CPU time per customer delivered: the engine, its statements (SQLAlchemy,
asyncpg) and, with `BENCH_ENGINE_CONNECTOR=http`, the mock connector's aiohttp call to a
CRM that costs nothing (a fixed-answer asyncio server in this process's child); with the
default `instant`, a connector that answers every change delivered at once, so what is
left is the engine and its statements alone.

What the service spends a delivery on, without the noise of the API, the CRM mock and the
load sharing two cores (bench/README, "2026-12-06, late afternoon").
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from seed import seed_backlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from customer_service.config import Settings
from customer_service.db import create_sessionmaker, engines_for
from customer_service.migrate import migrate
from customer_service.sync.connector import Change, build_connector
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.outcome import Delivered, Outcome

WARM_UP = 600
# A CRM that costs nothing: every request answered at once with a fixed record.
FREE_CRM = r"""
import asyncio, itertools, sys
ids = itertools.count(1)
class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1")
            size = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    size = int(value)
            if len(self.buffer) < end + 4 + size:
                return
            self.buffer = self.buffer[end + 4 + size:]
            body = b'{"id":"crm-%d","externalId":"x"}' % next(ids)
            status = b"201 Created" if head.startswith("POST") else b"200 OK"
            self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json"
                b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
async def main():
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""


class InstantConnector:
    """Every change delivered at once, no call made."""

    confirms_later = False
    batch_size = 1
    calls_in_flight = 16

    async def start(self, serving: bool) -> None:
        del serving

    async def close(self) -> None:
        pass

    async def send(self, changes: Sequence[Change]) -> list[Outcome]:
        await asyncio.sleep(0)
        return [Delivered(f"crm-{change.customer_id}") for change in changes]

    async def probe(self) -> None:
        return None

    def reader(self) -> Any:
        raise NotImplementedError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _fresh_database() -> str:
    server = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/crm_sync_bench"
    ).rsplit("/", 1)[0]
    name = os.environ.get("BENCH_ENGINE_DATABASE", "crm_sync_bench_engine")
    admin = create_async_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = f"{server}/{name}"
    await migrate(url)
    return url


async def measure(crm_port: int | None) -> float:
    count = int(os.environ.get("BENCH_ENGINE_CUSTOMERS", "6000"))
    group = int(os.environ.get("BENCH_ENGINE_GROUP", "15"))
    rate = float(os.environ.get("BENCH_ENGINE_RATE", "600"))
    url = await _fresh_database()
    crm_url = f"http://127.0.0.1:{crm_port or 9}"
    settings = Settings(database_url=url, crm_base_url=crm_url)
    api, sync = engines_for(settings)
    await seed_backlog(url, count)  # customers 1..count, each with a pending CREATE
    ids = list(range(1, count + 1))
    sessionmaker = create_sessionmaker(sync)
    connector: Any = (
        build_connector(settings, sessionmaker) if crm_port is not None else InstantConnector()
    )
    engine = DeliveryEngine(sessionmaker, connector, settings)

    async def kick(customers: list[int]) -> None:
        started = time.perf_counter()
        for done in range(0, len(customers), group):
            engine.kick(customers[done : done + group])
            due = started + (done + group) / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        for _ in range(600_000):  # at most ten minutes
            if not engine.in_flight:
                return
            await asyncio.sleep(0.001)
        raise RuntimeError("the engine did not deliver within ten minutes")

    await kick(ids[:WARM_UP])
    cpu = time.process_time()
    await kick(ids[WARM_UP:])
    cpu = time.process_time() - cpu
    await engine.close()
    await connector.close()
    await api.dispose()
    await sync.dispose()
    return cpu / (count - WARM_UP) * 1000


def main() -> int:
    http = os.environ.get("BENCH_ENGINE_CONNECTOR", "instant") == "http"
    crm: subprocess.Popen[bytes] | None = None
    port = _free_port() if http else None
    if port is not None:
        crm = subprocess.Popen([sys.executable, "-c", FREE_CRM, str(port)])
        time.sleep(0.5)
    try:
        ms = asyncio.run(measure(port))
    finally:
        if crm is not None:
            crm.kill()
    kind = "the mock connector to a free CRM" if http else "a connector answering at once"
    print(f"{ms:.3f} ms of this process's CPU a customer delivered ({kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
