"""The CRM mock's own maximum POST rate: phase 3's baseline, and a command of its own.

`python bench/crm_rate.py` starts `crm-mock serve` on a free loopback port with a fresh
SQLite database in a temporary folder, and prints how many `POST /api/crm/customers` it
answers per second with `BENCH_CRM_CONCURRENCY` (32) concurrent connections for
`BENCH_CRM_SECONDS` (10 s), each POST with a fresh `Idempotency-Key` and `externalId`.
With `BENCH_CRM_RATE` (POSTs/s) it sends them open loop at that rate instead: the mock's
CPU per POST when calls arrive one by one, as deliveries at a steady load do.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from harness import (
    BenchError,
    Server,
    Servers,
    clean_env,
    console_script,
    free_port,
    percentile,
    process_cpu_seconds,
    wait_healthy,
)
from rawhttp import RawConnection, RawHttpError, connection

WARM_UP_SECONDS = 1.0
CRM_CUSTOMERS = "/api/crm/customers"


async def start_crm(servers: Servers, name: str) -> Server:
    """`crm-mock serve` on a free port, its SQLite database in its own folder."""
    port = free_port()
    database = servers.workdir / name / "crm_mock.db"
    env = clean_env(
        HOST="127.0.0.1",
        PORT=str(port),
        CRM_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        LOG_FORMAT="text",
    )
    server = servers.start(name, [console_script("crm-mock"), "serve"], env, port)
    await wait_healthy(server)
    return server


async def crm_max_rate(
    crm: Server, concurrency: int, seconds: float, rate: float = 0.0
) -> dict[str, Any]:
    """POSTs per second straight to the CRM mock, `concurrency` connections each sending one
    after the other, with a fresh Idempotency-Key and externalId each; with a `rate`, sent
    open loop at that rate instead (what the mock costs when its calls come one by one)."""
    numbers = itertools.count()
    slots = itertools.count()
    paced_start = 0.0
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def post(conn: RawConnection, number: int) -> None:
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
            answer = await conn.request(
                "POST", CRM_CUSTOMERS, body, {"Idempotency-Key": str(uuid.uuid4())}
            )
        except RawHttpError as error:
            errors[type(error).__name__] += 1
            crm.check_alive()
            return
        if answer.status == 201:
            latencies.append(time.perf_counter() - sent)
        else:
            errors[str(answer.status)] += 1

    async def worker(stop_at: float) -> None:
        async with connection(crm.base_url) as conn:
            while time.perf_counter() < stop_at:
                if rate:
                    # Open loop: the next POST of the schedule, on whichever connection is free.
                    due = paced_start + next(slots) / rate
                    if due >= stop_at:
                        return
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                await post(conn, next(numbers))

    paced_start = time.perf_counter()
    warm_until = paced_start + WARM_UP_SECONDS
    await asyncio.gather(*(worker(warm_until) for _ in range(concurrency)))
    latencies.clear()
    errors.clear()
    slots = itertools.count()  # the measured schedule starts afresh
    cpu_before = process_cpu_seconds(crm.pid)
    started = paced_start = time.perf_counter()
    await asyncio.gather(*(worker(started + seconds) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = process_cpu_seconds(crm.pid) - cpu_before
    if not latencies:
        raise BenchError(f"no POST to the CRM mock succeeded ({dict(errors)})")
    return {
        "concurrency": concurrency,
        "posts": len(latencies),
        "seconds": elapsed,
        "perSecond": len(latencies) / elapsed,
        "cpuMsPerPost": cpu / len(latencies) * 1000,
        "errors": dict(errors),
        "latencyMs": {
            "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000,
        },
    }


async def measure(concurrency: int, seconds: float, rate: float = 0.0) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="crm-rate-"))
    servers = Servers(workdir)
    try:
        crm = await start_crm(servers, "crm")
        return await crm_max_rate(crm, concurrency, seconds, rate)
    finally:
        servers.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    concurrency = int(os.environ.get("BENCH_CRM_CONCURRENCY", "32"))
    seconds = float(os.environ.get("BENCH_CRM_SECONDS", "10"))
    rate = float(os.environ.get("BENCH_CRM_RATE", "0"))
    result = asyncio.run(measure(concurrency, seconds, rate))
    print(
        f"{result['posts']} POSTs in {result['seconds']:.1f} s = {result['perSecond']:.1f}/s "
        f"with {concurrency} connections, {result['cpuMsPerPost']:.2f} ms of the mock's CPU "
        f"each; p50 {result['latencyMs']['p50']:.1f} ms, "
        f"p99 {result['latencyMs']['p99']:.1f} ms; errors {result['errors']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
