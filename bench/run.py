"""`make bench`: the benchmark of the README's "Measure it", on real processes over loopback.

Starts `crm-mock serve` and `customer-service serve` (the console scripts next to this
Python) on free ports, each with its own databases in a temporary folder, and measures,
each against a baseline taken in the same run:

1. write throughput with sync on / the same service with `SYNC_ENABLED=false`;
2. write latency (p50, p99) with the CRM slowed by 500 ms / with a healthy CRM;
3. drain rate of a backlog (default 20,000 requests) / the CRM mock's own maximum rate;
4. delay from the CRM's return to the first delivered retry / `RETRY_INTERVAL_SECONDS`;
5. healthy sync lag p50 and p99 / the 100 ms of guarantee 4, under a steady moderate
   load (open loop, `BENCH_LAG_RATE` writes/s, default 10);
6. peak RSS of the customer service while draining / its RSS when idle;
7. in Kafka mode (`kafka_phase`): write throughput / HTTP's with sync on, and the sync
   lag to the CRM's apply / HTTP's.

Prints a table and writes `bench/results.json`. See `bench/README.md` for the settings
(`BENCH_BACKLOG`, `BENCH_DATABASE_URL`, ...).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
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
    ratio,
    rounded,
    rss_kib,
    run_command,
    say,
    wait_healthy,
)
from kafka_phase import kafka_figures

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"
LAG_TARGET_MS = 100.0
CRM_SLOW_MS = 500
RECOVERY_TARGET_SECONDS = 10.0
# The service's own defaults (README: Settings): the benchmark runs it with them.
RETRY_INTERVAL_SECONDS = 60.0
RETRY_CONCURRENCY = 16


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
    writers: int
    write_seconds: float
    latency_writers: int
    latency_writes: int
    crm_seconds: float
    recovery_customers: int
    lag_rate: float
    lag_writes: int

    @classmethod
    def from_env(cls) -> Params:
        return cls(
            backlog=int(_env_number("BENCH_BACKLOG", 20_000, integer=True)),
            writers=int(_env_number("BENCH_WRITERS", 16, integer=True)),
            write_seconds=_env_number("BENCH_WRITE_SECONDS", 15.0),
            latency_writers=int(_env_number("BENCH_LATENCY_WRITERS", 4, integer=True)),
            latency_writes=int(_env_number("BENCH_LATENCY_WRITES", 400, integer=True)),
            crm_seconds=_env_number("BENCH_CRM_SECONDS", 10.0),
            recovery_customers=int(_env_number("BENCH_RECOVERY_CUSTOMERS", 5, integer=True)),
            lag_rate=_env_number("BENCH_LAG_RATE", 10.0),
            lag_writes=int(_env_number("BENCH_LAG_WRITES", 300, integer=True)),
        )

    @property
    def drain_deadline(self) -> float:
        """Generous: 60 s plus 60 ms a request (20 minutes for 20,000)."""
        return 60.0 + 0.06 * self.backlog


# --------------------------------------------------------------------------- load


def customer_body(tag: str, number: int) -> dict[str, Any]:
    return {
        "firstName": f"Bench{number}",
        "lastName": "Writer",
        "email": f"{tag}-{number}@example.com",
        "phone": "+44 20 7946 0000",
        "address": {
            "street": f"{number} Bench Street",
            "city": "London",
            "state": None,
            "postalCode": "SW1Y 4JH",
            "country": "GB",
        },
    }


@dataclass
class WriteRun:
    """The answers of a burst of `POST /api/customers`."""

    latencies: list[float] = field(default_factory=list)
    created: dict[int, datetime] = field(default_factory=dict)
    # When the 201 reached the benchmark (same host clock as the CRM's receivedAt).
    answered: dict[int, datetime] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return self.ok / self.elapsed if self.elapsed else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "writes": self.ok,
            "seconds": self.elapsed,
            "perSecond": self.per_second,
            "errors": dict(self.errors),
            "latencyMs": {
                "p50": percentile(self.latencies, 50) * 1000,
                "p90": percentile(self.latencies, 90) * 1000,
                "p99": percentile(self.latencies, 99) * 1000,
                "max": max(self.latencies, default=math.nan) * 1000,
                "mean": sum(self.latencies) / len(self.latencies) * 1000
                if self.latencies
                else math.nan,
            },
        }


async def write_load(
    client: httpx.AsyncClient,
    service: Server,
    tag: str,
    writers: int,
    *,
    count: int | None = None,
    seconds: float | None = None,
) -> WriteRun:
    """`writers` concurrent clients POSTing customers, for `count` writes or `seconds`."""
    run = WriteRun()
    numbers = itertools.count()
    url = f"{service.base_url}/api/customers"
    started = time.perf_counter()
    stop_at = started + seconds if seconds is not None else math.inf

    async def writer() -> None:
        while time.perf_counter() < stop_at:
            number = next(numbers)
            if count is not None and number >= count:
                return
            sent = time.perf_counter()
            try:
                response = await client.post(url, json=customer_body(tag, number))
            except httpx.HTTPError as error:
                run.errors[type(error).__name__] += 1
                service.check_alive()
                continue
            took = time.perf_counter() - sent
            if response.status_code == 201:
                body = response.json()
                run.latencies.append(took)
                run.created[int(body["id"])] = parse_time(body["createdAt"])
                run.answered[int(body["id"])] = datetime.now(UTC)
            else:
                run.errors[str(response.status_code)] += 1

    await asyncio.gather(*(writer() for _ in range(writers)))
    run.elapsed = time.perf_counter() - started
    if run.ok == 0:
        raise BenchError(f"no write succeeded ({dict(run.errors)})\n{service.log_tail()}")
    return run


async def paced_load(
    client: httpx.AsyncClient, service: Server, tag: str, rate: float, count: int
) -> WriteRun:
    """Open loop: write `count` customers at `rate` per second, each sent on schedule
    whether or not earlier ones have answered (so the load does not bend to the service)."""
    run = WriteRun()
    url = f"{service.base_url}/api/customers"
    started = time.perf_counter()

    async def write(number: int) -> None:
        sent = time.perf_counter()
        try:
            response = await client.post(url, json=customer_body(tag, number))
        except httpx.HTTPError as error:
            run.errors[type(error).__name__] += 1
            return
        if response.status_code == 201:
            body = response.json()
            run.latencies.append(time.perf_counter() - sent)
            run.created[int(body["id"])] = parse_time(body["createdAt"])
            run.answered[int(body["id"])] = datetime.now(UTC)
        else:
            run.errors[str(response.status_code)] += 1

    tasks = []
    for number in range(count):
        delay = started + number / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(write(number)))
    await asyncio.gather(*tasks)
    run.elapsed = time.perf_counter() - started
    if run.ok == 0:
        raise BenchError(f"no write succeeded ({dict(run.errors)})\n{service.log_tail()}")
    return run


async def crm_max_rate(
    client: httpx.AsyncClient, crm: Server, concurrency: int, seconds: float
) -> dict[str, Any]:
    """POSTs per second straight to the CRM mock: fresh Idempotency-Key and externalId each."""
    numbers = itertools.count()
    url = f"{crm.base_url}/api/crm/customers"
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def post(number: int) -> None:
        body = {
            "externalId": f"max-{number}",
            "firstName": f"Max{number}",
            "lastName": "Rate",
            "email": f"max-{number}@example.com",
            "phone": "+44 20 7946 0000",
            "address": f"{number} Bench Street, London, SW1Y 4JH, GB",
        }
        sent = time.perf_counter()
        try:
            response = await client.post(
                url, json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
            )
        except httpx.HTTPError as error:
            errors[type(error).__name__] += 1
            crm.check_alive()
            return
        if response.status_code == 201:
            latencies.append(time.perf_counter() - sent)
        else:
            errors[str(response.status_code)] += 1

    async def worker(stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            await post(next(numbers))

    # A short warm-up, then the measured window.
    warm_until = time.perf_counter() + 1.0
    await asyncio.gather(*(worker(warm_until) for _ in range(concurrency)))
    latencies.clear()
    errors.clear()
    started = time.perf_counter()
    await asyncio.gather(*(worker(started + seconds) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if not latencies:
        raise BenchError(f"no POST to the CRM mock succeeded ({dict(errors)})")
    return {
        "concurrency": concurrency,
        "posts": len(latencies),
        "seconds": elapsed,
        "perSecond": len(latencies) / elapsed,
        "errors": dict(errors),
        "latencyMs": {
            "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000,
        },
    }


# --------------------------------------------------------------------------- seeding


async def seed_backlog(url: str, count: int) -> None:
    """Write `count` customers and their pending CREATE requests straight into the
    database, as the API's transaction would (see `customer_service.sync.outbox`)."""
    from sqlalchemy import insert, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from customer_service.columns import utc_now
    from customer_service.crm.mapper import CustomerMapper
    from customer_service.customers.models import Customer
    from customer_service.sync.models import FailedRequest, Operation, RequestStatus

    now = utc_now()
    customers: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    for number in range(1, count + 1):
        email = f"drain-{number}@example.com"
        row: dict[str, Any] = {
            "id": number,
            "first_name": f"Drain{number}",
            "last_name": "Backlog",
            "email": email,
            "email_key": email.lower(),
            "phone": "+44 20 7946 0000",
            "street": f"{number} Bench Street",
            "city": "London",
            "state": None,
            "postal_code": "SW1Y 4JH",
            "country": "GB",
            "version": 1,
            "crm_id": None,
            "crm_synced_version": None,
            "created_at": now,
            "updated_at": now,
        }
        customers.append(row)
        payload = CustomerMapper.to_crm(Customer(**row)).to_json()
        requests.append(
            {
                "customer_id": number,
                "operation": Operation.CREATE.value,
                "status": RequestStatus.PENDING.value,
                "attempts": 0,
                "last_error": None,
                "next_attempt_at": now,
                "version": 1,
                "payload": payload,
                "crm_id": None,
                "idempotency_key": str(uuid.uuid4()),
                "created_at": now,
                "updated_at": now,
            }
        )
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for start in range(0, count, 2000):
                await connection.execute(insert(Customer), customers[start : start + 2000])
            for start in range(0, count, 2000):
                await connection.execute(insert(FailedRequest), requests[start : start + 2000])
            if engine.dialect.name == "postgresql":
                # Explicit ids do not move the sequence: later API writes must not reuse them.
                await connection.execute(
                    text("SELECT setval(pg_get_serial_sequence('customers', 'id'), :n)"),
                    {"n": count},
                )
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, params: Params, servers: Servers, database: Database) -> None:
        self.params = params
        self.workdir = servers.workdir
        self.database = database
        self.servers = servers
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
        self.customer_service = console_script("customer-service")
        self.crm_mock = console_script("crm-mock")

    # ----------------------------------------------------------------- processes

    async def start_crm(self, name: str) -> Server:
        port = free_port()
        database = self.workdir / name / "crm_mock.db"
        env = clean_env(
            HOST="127.0.0.1",
            PORT=str(port),
            CRM_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
            LOG_FORMAT="text",
        )
        server = self.servers.start(name, [self.crm_mock, "serve"], env, port)
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

    async def wait_drained(self, service: Server, crm: Server, within: float = 120.0) -> float:
        async def empty() -> bool:
            return await self.failed_total(service) == 0

        return await self.wait_for(
            f"the backlog of {service.name} to drain", empty, within, [service, crm]
        )

    # ----------------------------------------------------------------- phase 1

    async def throughput(self) -> dict[str, Any]:
        p = self.params
        say(
            f"phase 1/4: write throughput, {p.writers} writers for {p.write_seconds:.0f} s, "
            "SYNC_ENABLED=false then true"
        )
        crm = await self.start_crm("p1-crm")
        result: dict[str, Any] = {"writers": p.writers, "seconds": p.write_seconds}
        for label, enabled in (("syncOff", "false"), ("syncOn", "true")):
            service = await self.start_service(f"p1-{label}", crm, SYNC_ENABLED=enabled)
            await write_load(self.client, service, f"{label}-warm", p.writers, count=2 * p.writers)
            run = await write_load(self.client, service, label, p.writers, seconds=p.write_seconds)
            summary = run.summary()
            summary["undeliveredAtEnd"] = await self.failed_total(service)
            result[label] = summary
            say(
                f"  {label}: {run.ok} writes in {run.elapsed:.1f} s = {run.per_second:.1f}/s, "
                f"p50 {summary['latencyMs']['p50']:.0f} ms, errors {dict(run.errors)}"
            )
            self.servers.stop(service)
        result["ratio"] = ratio(result["syncOn"]["perSecond"], result["syncOff"]["perSecond"])
        return result

    # ----------------------------------------------------------------- phases 2 and 5

    async def latency_and_lag(self) -> dict[str, Any]:
        p = self.params
        say(
            f"phase 2/4: write latency and sync lag, {p.latency_writers} writers x "
            f"{p.latency_writes} writes, healthy CRM then CRM +{CRM_SLOW_MS} ms"
        )
        crm = await self.start_crm("p2-crm")
        service = await self.start_service("p2-service", crm)
        await write_load(self.client, service, "warm", p.latency_writers, count=20)
        await self.wait_drained(service, crm)

        healthy = await write_load(
            self.client, service, "healthy", p.latency_writers, count=p.latency_writes
        )
        await self.wait_drained(service, crm)
        say(
            f"  healthy: p50 {healthy.summary()['latencyMs']['p50']:.1f} ms, "
            f"p99 {healthy.summary()['latencyMs']['p99']:.1f} ms"
        )
        # Sync lag under a steady, moderate load (open loop), not at saturation, where
        # it would measure the queue in front of a busy machine rather than the sync.
        paced = await paced_load(self.client, service, "lag", p.lag_rate, p.lag_writes)
        await self.wait_drained(service, crm)
        lag = self.match_lag(paced, await self.crm_log(crm))
        lag["ratePerSecond"] = p.lag_rate
        say(
            f"  sync lag at {p.lag_rate:g} writes/s: "
            f"p50 {lag['p50Ms']:.1f} ms, p99 {lag['p99Ms']:.1f} ms "
            f"(after the answer: p50 {lag['fromAnswerMs']['p50']:.1f} ms, "
            f"p99 {lag['fromAnswerMs']['p99']:.1f} ms)"
        )

        await self.set_faults(crm, latencyMs=CRM_SLOW_MS)
        slow = await write_load(
            self.client, service, "slow", p.latency_writers, count=p.latency_writes
        )
        undelivered = await self.failed_total(service)
        await self.set_faults(crm, latencyMs=0)
        say(
            f"  CRM +{CRM_SLOW_MS} ms: p50 {slow.summary()['latencyMs']['p50']:.1f} ms, "
            f"p99 {slow.summary()['latencyMs']['p99']:.1f} ms "
            f"({undelivered} requests undelivered when the last write answered)"
        )
        await self.wait_drained(service, crm)
        self.servers.stop_all()

        healthy_ms = healthy.summary()["latencyMs"]
        slow_ms = slow.summary()["latencyMs"]
        return {
            "writers": p.latency_writers,
            "writes": p.latency_writes,
            "crmLatencyMs": CRM_SLOW_MS,
            "healthy": healthy.summary(),
            "slow": {**slow.summary(), "undeliveredAtEnd": undelivered},
            "ratioP50": ratio(slow_ms["p50"], healthy_ms["p50"]),
            "ratioP99": ratio(slow_ms["p99"], healthy_ms["p99"]),
            "healthyLatenciesMs": [x * 1000 for x in healthy.latencies],
            "slowLatenciesMs": [x * 1000 for x in slow.latencies],
            "lag": lag,
        }

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

    # ----------------------------------------------------------------- phases 3 and 6

    async def drain(self) -> dict[str, Any]:
        p = self.params
        n = p.backlog
        say(f"phase 3/4: drain of a {n}-request backlog, then the CRM mock's own maximum rate")
        url = await self.new_database("p3-database")
        seeding = time.monotonic()
        await seed_backlog(url, n)
        say(
            f"  seeded {n} customers and their pending CREATE requests "
            f"in {time.monotonic() - seeding:.1f} s"
        )
        crm = await self.start_crm("p3-crm")

        # Idle baseline: the same database and binary, with delivery off.
        idle = await self.start_service("p3-idle", crm, url, SYNC_ENABLED="false")
        seeded = await self.failed_total(idle)
        if seeded != n:
            raise BenchError(f"the service sees {seeded} pending requests, not {n}")
        await asyncio.sleep(2.0)
        samples: list[int] = []
        for _ in range(10):
            samples.append(rss_kib(idle.pid).get("VmRSS", 0))
            await asyncio.sleep(0.2)
        idle_kib = sorted(samples)[len(samples) // 2]
        self.servers.stop(idle)
        say(f"  idle RSS (SYNC_ENABLED=false, same database): {idle_kib / 1024:.1f} MiB")

        say(f"  starting the service with sync on; deadline {p.drain_deadline:.0f} s")
        spawned = time.monotonic()
        service = self.spawn_service("p3-drain", crm, url)
        peak_kib = hwm_kib = 0
        rss_series: list[tuple[float, int]] = []
        sampling = True

        async def sample() -> None:
            nonlocal peak_kib
            while sampling:
                kib = rss_kib(service.pid).get("VmRSS", 0)
                peak_kib = max(peak_kib, kib)
                rss_series.append((time.monotonic() - spawned, kib))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        try:
            await wait_healthy(service)
            ready_after = time.monotonic() - spawned
            last_report = time.monotonic()
            left = n
            while True:
                service.check_alive()
                crm.check_alive()
                left = await self.failed_total(service)
                now = time.monotonic()
                if left == 0:
                    break
                if now - spawned > p.drain_deadline:
                    raise BenchError(
                        f"the drain did not finish in {p.drain_deadline:.0f} s ({left} left)"
                    )
                if now - last_report >= 15:
                    done = n - left
                    say(f"  drain: {done}/{n} delivered, {done / (now - spawned):.0f}/s so far")
                    last_report = now
                await asyncio.sleep(0.5)
            drained_after = time.monotonic() - spawned
            hwm_kib = rss_kib(service.pid).get("VmHWM", 0)
        finally:
            sampling = False
            await sampler
        peak_kib = max(peak_kib, hwm_kib)
        drain_rate = n / drained_after
        say(
            f"  drained {n} in {drained_after:.1f} s from spawn = {drain_rate:.1f}/s; "
            f"peak RSS {peak_kib / 1024:.1f} MiB"
        )
        self.servers.stop(service)

        crm_page = await self.get_json(f"{crm.base_url}/api/crm/customers", limit=1)
        log = await self.crm_log(crm)
        posts = [e for e in log if e["method"] == "POST"]
        by_status = Counter(str(e["status"]) for e in posts)
        ok_times = sorted(parse_time(e["receivedAt"]) for e in posts if 200 <= e["status"] < 300)
        active = (ok_times[-1] - ok_times[0]).total_seconds() if len(ok_times) > 1 else math.nan
        if int(crm_page["total"]) != n:
            say(f"  WARNING: the CRM holds {crm_page['total']} records, expected {n}")

        say(f"  CRM mock maximum: {RETRY_CONCURRENCY} concurrent POSTs for {p.crm_seconds:.0f} s")
        maximum = await crm_max_rate(self.client, crm, RETRY_CONCURRENCY, p.crm_seconds)
        say(f"  CRM mock: {maximum['perSecond']:.1f} POSTs/s")
        self.servers.stop_all()

        rss_mib = peak_kib / 1024
        idle_mib = idle_kib / 1024
        return {
            "backlog": n,
            "retryConcurrency": RETRY_CONCURRENCY,
            "deadlineSeconds": p.drain_deadline,
            "readyAfterSeconds": ready_after,
            "drainedAfterSeconds": drained_after,
            "perSecond": drain_rate,
            "crmRecords": int(crm_page["total"]),
            "crmPostsByStatus": dict(by_status),
            "crmFirstToLastSuccessSeconds": active,
            "perSecondFirstToLastSuccess": (len(ok_times) - 1) / active if active else math.nan,
            "crmMax": maximum,
            "ratio": ratio(drain_rate, maximum["perSecond"]),
            "memory": {
                "idleRssMiB": idle_mib,
                "idleSamplesKiB": samples,
                "peakRssMiB": rss_mib,
                "vmHwmKiB": hwm_kib,
                "ratio": ratio(rss_mib, idle_mib),
                "seriesKiB": [
                    [round(t, 2), kib] for t, kib in rss_series[:: max(1, len(rss_series) // 500)]
                ],
            },
        }

    # ----------------------------------------------------------------- phase 4

    async def recovery(self) -> dict[str, Any]:
        p = self.params
        say(
            f"phase 4/4: CRM down, {p.recovery_customers} writes, CRM back: delay to the "
            f"first delivered retry (RETRY_INTERVAL_SECONDS={RETRY_INTERVAL_SECONDS:.0f}, "
            "RECOVERY_PROBE_SECONDS=1)"
        )
        crm = await self.start_crm("p4-crm")
        service = await self.start_service("p4-service", crm)
        await asyncio.sleep(2.0)  # let the start-up pass and probe settle
        await self.set_faults(crm, down=True, statusCode=503)
        created = await write_load(self.client, service, "outage", 1, count=p.recovery_customers)

        async def all_failed() -> bool:
            return await self.failed_total(service, status="failed") == created.ok

        await self.wait_for("the writes to fail against the down CRM", all_failed, 30, [service])
        # Past the first backoff (about 1 s): only the probe or the 60 s tick can retry now.
        await asyncio.sleep(3.0)

        back_at = datetime.now(UTC)
        back_mono = time.monotonic()
        await self.set_faults(crm, down=False)
        first: datetime | None = None
        drained: float | None = None
        timeout = RETRY_INTERVAL_SECONDS + 30
        while first is None or drained is None:
            service.check_alive()
            if first is None:
                for entry in await self.crm_log(crm, limit=500):
                    when = parse_time(entry["receivedAt"])
                    if (
                        entry["method"] != "GET"
                        and 200 <= entry["status"] < 300
                        and when >= back_at
                    ):
                        first = when if first is None else min(first, when)
            if drained is None and await self.failed_total(service) == 0:
                drained = time.monotonic() - back_mono
            if time.monotonic() - back_mono > timeout:
                raise BenchError(
                    f"no retry was delivered within {timeout:.0f} s of the CRM's return"
                )
            await asyncio.sleep(0.05)
        self.servers.stop_all()
        delay = (first - back_at).total_seconds()
        say(
            f"  first delivered retry {delay:.2f} s after the CRM came back; all in {drained:.2f} s"
        )
        return {
            "customers": created.ok,
            "retryIntervalSeconds": RETRY_INTERVAL_SECONDS,
            "recoveryProbeSeconds": 1.0,
            "firstDeliverySeconds": delay,
            "drainedSeconds": drained,
            "ratio": delay / RETRY_INTERVAL_SECONDS,
        }

    async def close(self) -> None:
        self.servers.stop_all()
        await self.client.aclose()
        await self.database.drop()


# --------------------------------------------------------------------------- report


def _fmt(value: float, unit: str, digits: int = 1) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f} {unit}".rstrip()


def build_table(metrics: dict[str, Any]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def row(metric: str, value: str, baseline: str, r: float, target: str, verdict: str) -> None:
        rows.append(
            {
                "metric": metric,
                "value": value,
                "baseline": baseline,
                "ratio": _fmt(r, "", 3),
                "target": target,
                "verdict": verdict,
            }
        )

    def failed(metric: str, key: str) -> bool:
        error = metrics.get(key, {}).get("error")
        if error:
            row(metric, "error", "", math.nan, "", "not measured")
        return bool(error)

    if not failed("1 write throughput, sync on / off", "throughput"):
        t = metrics["throughput"]
        row(
            f"1 write throughput, sync on / off ({t['writers']} writers)",
            _fmt(t["syncOn"]["perSecond"], "/s"),
            _fmt(t["syncOff"]["perSecond"], "/s"),
            t["ratio"],
            "none (1.0 = sync is free)",
            "-",
        )
    if not failed("2 write latency, CRM +500 ms / healthy", "latency"):
        lat = metrics["latency"]
        for pct in ("p50", "p99"):
            slow = lat["slow"]["latencyMs"][pct]
            row(
                f"2 write latency {pct}, CRM +{CRM_SLOW_MS} ms / healthy",
                _fmt(slow, "ms"),
                _fmt(lat["healthy"]["latencyMs"][pct], "ms"),
                lat[f"ratio{pct.upper()}"],
                f"near 1; < {CRM_SLOW_MS} ms (G4)",
                "ok" if slow < CRM_SLOW_MS else "FAIL",
            )
    if not failed("3 drain rate / CRM max", "drain"):
        d = metrics["drain"]
        row(
            f"3 drain rate of {d['backlog']} / CRM max ({d['retryConcurrency']} conc.)",
            _fmt(d["perSecond"], "/s"),
            _fmt(d["crmMax"]["perSecond"], "/s"),
            d["ratio"],
            "none",
            "-",
        )
    if not failed("4 CRM back -> first retry", "recovery"):
        rec = metrics["recovery"]
        delay = rec["firstDeliverySeconds"]
        row(
            "4 CRM back -> first delivered retry",
            _fmt(delay, "s", 2),
            _fmt(rec["retryIntervalSeconds"], "s (interval)", 0),
            rec["ratio"],
            f"within seconds (< {RECOVERY_TARGET_SECONDS:.0f} s, G7)",
            "ok" if delay < RECOVERY_TARGET_SECONDS else "FAIL",
        )
    if "latency" in metrics and not metrics["latency"].get("error"):
        lag = metrics["latency"]["lag"]
        row(
            f"5 healthy sync lag p50 ({lag['ratePerSecond']:g} writes/s)",
            _fmt(lag["p50Ms"], "ms"),
            _fmt(LAG_TARGET_MS, "ms", 0),
            ratio(lag["p50Ms"], LAG_TARGET_MS),
            "-",
            "-",
        )
        row(
            f"5 healthy sync lag p99 ({lag['ratePerSecond']:g} writes/s)",
            _fmt(lag["p99Ms"], "ms"),
            _fmt(LAG_TARGET_MS, "ms", 0),
            lag["ratioP99"],
            f"<= {LAG_TARGET_MS:.0f} ms (G4)",
            "ok" if lag["p99Ms"] <= LAG_TARGET_MS and lag["unmatched"] == 0 else "FAIL",
        )
        row(
            "5 sync lag p99 counted from the 201 answer",
            _fmt(lag["fromAnswerMs"]["p99"], "ms"),
            _fmt(LAG_TARGET_MS, "ms", 0),
            ratio(lag["fromAnswerMs"]["p99"], LAG_TARGET_MS),
            "(information)",
            "-",
        )
    if not failed("7 Kafka mode", "kafka"):
        k = metrics["kafka"]
        http = metrics.get("throughput", {}).get("syncOn", {}).get("perSecond", math.nan)
        row(
            f"7 Kafka write throughput / HTTP, sync on ({k['writers']} writers)",
            _fmt(k["throughput"]["perSecond"], "/s"),
            _fmt(http, "/s"),
            ratio(k["throughput"]["perSecond"], http),
            "none",
            "-",
        )
        http_lag = metrics.get("latency", {}).get("lag", {})
        for pct in ("p50", "p99"):
            value = k["lag"][f"{pct}Ms"]
            baseline = http_lag.get(f"{pct}Ms", math.nan)
            row(
                f"7 Kafka sync lag {pct}, to the CRM's apply / HTTP",
                _fmt(value, "ms"),
                _fmt(baseline, "ms"),
                ratio(value, baseline),
                "-",
                "-",
            )
    if "drain" in metrics and not metrics["drain"].get("error"):
        mem = metrics["drain"]["memory"]
        row(
            "6 peak RSS while draining / idle",
            _fmt(mem["peakRssMiB"], "MiB"),
            _fmt(mem["idleRssMiB"], "MiB"),
            mem["ratio"],
            "none",
            "-",
        )
    return rows


def print_table(rows: list[dict[str, str]]) -> None:
    headers = {
        "metric": "metric",
        "value": "value",
        "baseline": "baseline",
        "ratio": "ratio",
        "target": "target",
        "verdict": "verdict",
    }
    widths = {k: max(len(headers[k]), *(len(r[k]) for r in rows)) for k in headers}
    line = "  ".join(f"{headers[k]:<{widths[k]}}" for k in headers)
    print()
    print(line.rstrip())
    print("  ".join("-" * widths[k] for k in headers))
    for r in rows:
        print("  ".join(f"{r[k]:<{widths[k]}}" for k in headers).rstrip())
    print()


# --------------------------------------------------------------------------- main


async def run_all(params: Params, servers: Servers, database: Database) -> dict[str, Any]:
    bench = Bench(params, servers, database)
    metrics: dict[str, Any] = {}
    phases: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        ("throughput", bench.throughput),
        ("latency", bench.latency_and_lag),
        ("drain", bench.drain),
        ("recovery", bench.recovery),
        ("kafka", lambda: kafka_figures(bench, write_load, paced_load)),
    ]
    try:
        for key, phase in phases:
            started = time.monotonic()
            try:
                metrics[key] = await phase()
            except (BenchError, httpx.HTTPError) as error:
                say(f"  {key} not measured: {error}")
                metrics[key] = {"error": str(error)}
            finally:
                bench.servers.stop_all()
            metrics.setdefault(key, {})["phaseSeconds"] = time.monotonic() - started
    finally:
        await bench.close()
    return metrics


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        params = Params.from_env()
        database = Database(os.environ.get("BENCH_DATABASE_URL", "").strip() or None)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="crm-sync-bench-"))
    servers = Servers(workdir)
    keep = os.environ.get("BENCH_KEEP", "") not in ("", "0")
    say(
        f"crm-sync benchmark: {database.kind} customer database, backlog {params.backlog}, "
        f"{os.cpu_count()} cores; work folder {workdir}"
    )
    started = datetime.now(UTC)
    clock = time.monotonic()
    failed = True
    try:
        metrics = asyncio.run(run_all(params, servers, database))
        rows = build_table(metrics)
        results = {
            "timestamp": started.isoformat(),
            "durationSeconds": time.monotonic() - clock,
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpuCount": os.cpu_count(),
            "database": database.kind,
            "parameters": {
                "backlog": params.backlog,
                "writers": params.writers,
                "writeSeconds": params.write_seconds,
                "latencyWriters": params.latency_writers,
                "latencyWrites": params.latency_writes,
                "crmSlowMs": CRM_SLOW_MS,
                "crmMaxSeconds": params.crm_seconds,
                "recoveryCustomers": params.recovery_customers,
                "retryConcurrency": RETRY_CONCURRENCY,
                "retryIntervalSeconds": RETRY_INTERVAL_SECONDS,
                "drainDeadlineSeconds": params.drain_deadline,
                "lagTargetMs": LAG_TARGET_MS,
            },
            "metrics": metrics,
            "table": rows,
        }
        RESULTS_PATH.write_text(json.dumps(rounded(results), indent=2) + "\n")
        print_table(rows)
        say(f"wrote {RESULTS_PATH} in {time.monotonic() - clock:.0f} s")
        failed = any("error" in m for m in metrics.values())
        return 1 if failed else 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        # Whatever happened above, nothing this run started keeps running.
        servers.stop_all()
        if failed and database.postgres_url is not None:
            try:
                asyncio.run(database.drop())
            except Exception as error:
                say(f"could not drop the benchmark database: {error!r}")
        if keep or failed:
            say(f"logs and databases kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
