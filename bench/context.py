"""What every phase shares: the run's parameters, its processes, and HTTP helpers.

`Bench` starts the CRM mock, the customer service and the seed's design on free ports, each
with fresh databases in the run's folder, and asks them what the phases need to know.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from crm_rate import start_crm
from harness import (
    BenchError,
    Database,
    Server,
    Servers,
    clean_env,
    console_script,
    free_port,
    parse_time,
    percentile,
    process_cpu_seconds,
    ratio,
    run_command,
    wait_healthy,
)
from load import WriteRun

LAG_TARGET_MS = 100.0
SEED_APP = Path(__file__).resolve().parent / "seed_app.py"


def _env_number(name: str, default: float, *, integer: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise BenchError(f"{name}={raw!r} is not a {'whole ' if integer else ''}number") from None
    if value <= 0:
        raise BenchError(f"{name}={raw!r} must be greater than 0")
    return value


@dataclass(frozen=True)
class Params:
    backlog: int
    big_backlog: int
    writers: int
    write_seconds: float
    latency_writers: int
    latency_writes: int
    crm_seconds: float
    recovery_customers: int
    lag_rate: float | None  # None: half the sync-off capacity measured in phase 1
    lag_seconds: float
    skip: frozenset[str]
    scale_backlog: int = 5_000
    limit_backlog: int = 2_000
    # Phase 1's loads again with the service alone on a core (`pinning.py`).
    service_alone: bool = False

    @classmethod
    def from_env(cls) -> Params:
        lag_rate = os.environ.get("BENCH_LAG_RATE", "").strip()
        return cls(
            backlog=int(_env_number("BENCH_BACKLOG", 20_000, integer=True)),
            big_backlog=int(_env_number("BENCH_BIG_BACKLOG", 100_000, integer=True)),
            writers=int(_env_number("BENCH_WRITERS", 32, integer=True)),
            write_seconds=_env_number("BENCH_WRITE_SECONDS", 15.0),
            latency_writers=int(_env_number("BENCH_LATENCY_WRITERS", 4, integer=True)),
            latency_writes=int(_env_number("BENCH_LATENCY_WRITES", 400, integer=True)),
            crm_seconds=_env_number("BENCH_CRM_SECONDS", 10.0),
            recovery_customers=int(_env_number("BENCH_RECOVERY_CUSTOMERS", 5, integer=True)),
            lag_rate=_env_number("BENCH_LAG_RATE", 1.0) if lag_rate else None,
            lag_seconds=_env_number("BENCH_LAG_SECONDS", 20.0),
            skip=frozenset(
                part.strip() for part in os.environ.get("BENCH_SKIP", "").split(",") if part.strip()
            ),
            scale_backlog=int(_env_number("BENCH_SCALE_BACKLOG", 5_000, integer=True)),
            limit_backlog=int(_env_number("BENCH_LIMIT_BACKLOG", 2_000, integer=True)),
            service_alone=os.environ.get("BENCH_SERVICE_ALONE", "").strip() == "1",
        )

    def drain_deadline(self, backlog: int) -> float:
        """Generous: 60 s plus 60 ms a request (20 minutes for 20,000)."""
        return 60.0 + 0.06 * backlog


class Bench:
    def __init__(self, params: Params, servers: Servers, database: Database) -> None:
        self.params = params
        self.workdir = servers.workdir
        self.database = database
        self.servers = servers
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0),
            # Idle connections dropped before uvicorn closes them (5 s), never raced.
            limits=httpx.Limits(
                max_connections=100, max_keepalive_connections=100, keepalive_expiry=1.0
            ),
        )
        self.customer_service = console_script("customer-service")
        self.crm_mock = console_script("crm-mock")

    # ----------------------------------------------------------------- processes

    async def start_crm(self, name: str) -> Server:
        return await start_crm(self.servers, name)

    async def start_seed_app(self, name: str, crm: Server) -> Server:
        """The seed's design (`seed_app.py`) on a fresh database of its own."""
        folder = self.workdir / name
        url = await self.database.fresh(folder)
        port = free_port()
        env = clean_env(DATABASE_URL=url, HOST="127.0.0.1", PORT=str(port))
        env["CRM_BASE_URL"] = crm.base_url
        server = self.servers.start(name, [sys.executable, str(SEED_APP)], env, port)
        await wait_healthy(server)
        return server

    async def new_database(self, name: str) -> str:
        """An empty, migrated database for a customer-service instance."""
        folder = self.workdir / name
        url = await self.database.fresh(folder)
        env = clean_env(DATABASE_URL=url)
        await asyncio.to_thread(run_command, [self.customer_service, "migrate"], env, folder)
        return url

    def spawn_service(self, name: str, crm: Server, url: str, **settings: str) -> Server:
        port = free_port()
        env = clean_env(
            DATABASE_URL=url,
            HOST="127.0.0.1",
            PORT=str(port),
            CRM_BASE_URL=crm.base_url,
            LOG_FORMAT="text",
            **settings,
        )
        return self.servers.start(name, [self.customer_service, "serve"], env, port)

    async def start_service(
        self, name: str, crm: Server, url: str | None = None, **settings: str
    ) -> Server:
        url = url or await self.new_database(name)
        server = self.spawn_service(name, crm, url, **settings)
        await wait_healthy(server)
        return server

    # ----------------------------------------------------------------- HTTP helpers

    async def get_json(self, url: str, **params: Any) -> Any:
        response = await self.client.get(url, params=params)
        response.raise_for_status()
        return response.json()

    async def failed_total(self, service: Server, **params: Any) -> int:
        page = await self.get_json(f"{service.base_url}/api/failed-requests", limit=1, **params)
        return int(page["total"])

    async def set_faults(self, crm: Server, **faults: Any) -> None:
        response = await self.client.put(f"{crm.base_url}/api/crm/_faults", json=faults)
        response.raise_for_status()

    async def crm_log(self, crm: Server, limit: int = 100_000) -> list[dict[str, Any]]:
        page = await self.get_json(f"{crm.base_url}/api/crm/_requests", limit=limit)
        items: list[dict[str, Any]] = page["items"]
        return items

    async def wait_for(
        self,
        what: str,
        done: Callable[[], Awaitable[bool]],
        within: float,
        servers: list[Server],
        interval: float = 0.25,
    ) -> float:
        """Poll `done` until true; the seconds it took. BenchError after `within` s."""
        started = time.monotonic()
        while True:
            for server in servers:
                server.check_alive()
            if await done():
                return time.monotonic() - started
            if time.monotonic() - started > within:
                raise BenchError(f"gave up after {within:.0f} s waiting for {what}")
            await asyncio.sleep(interval)

    async def wait_quiet(
        self, service: Server, within: float, window: float = 0.5, busy: float = 0.1
    ) -> float:
        """Until `service` used under `busy` of a core over `window` seconds; the seconds
        it took. BenchError after `within` s."""
        started = time.monotonic()
        while True:
            service.check_alive()
            before = process_cpu_seconds(service.pid)
            await asyncio.sleep(window)
            if process_cpu_seconds(service.pid) - before < busy * window:
                return time.monotonic() - started
            if time.monotonic() - started > within:
                raise BenchError(f"{service.name} was still busy after {within:.0f} s")

    async def wait_drained(
        self, service: Server, crm: Server, within: float = 120.0, interval: float = 0.25
    ) -> float:
        async def empty() -> bool:
            return await self.failed_total(service) == 0

        return await self.wait_for(
            f"the backlog of {service.name} to drain", empty, within, [service, crm], interval
        )

    @staticmethod
    def match_lag(run: WriteRun, log: list[dict[str, Any]]) -> dict[str, Any]:
        """createdAt of each write to the CRM's receivedAt of its first successful POST."""
        received: dict[int, datetime] = {}
        for entry in log:
            external = entry.get("externalId")
            if entry["method"] != "POST" or not 200 <= entry["status"] < 300 or not external:
                continue
            if not str(external).isdigit():
                continue
            received.setdefault(int(external), parse_time(entry["receivedAt"]))
        lags = [
            (received[cid] - created).total_seconds() * 1000
            for cid, created in run.created.items()
            if cid in received
        ]
        # The same, from the moment the 201 reached the client (negative: the CRM had it
        # before the client had its answer).
        after_answer = [
            (received[cid] - answered).total_seconds() * 1000
            for cid, answered in run.answered.items()
            if cid in received
        ]
        return {
            "fromAnswerMs": {
                "p50": percentile(after_answer, 50),
                "p99": percentile(after_answer, 99),
                "max": max(after_answer, default=math.nan),
            },
            "matched": len(lags),
            "unmatched": len(run.created) - len(lags),
            "p50Ms": percentile(lags, 50),
            "p90Ms": percentile(lags, 90),
            "p99Ms": percentile(lags, 99),
            "maxMs": max(lags, default=math.nan),
            "ratioP99": ratio(percentile(lags, 99), LAG_TARGET_MS),
            "lagsMs": lags,
        }

    async def close(self) -> None:
        self.servers.stop_all()
        await self.client.aclose()
        await self.database.drop()
