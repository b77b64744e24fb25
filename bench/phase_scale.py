"""Phase 8 (PostgreSQL only): the drain of one backlog by three service processes against
one process, on the same database server and the same kind of fresh CRM mock.

Each run seeds `BENCH_SCALE_BACKLOG` (5,000) customers with a pending CREATE into a fresh
database, starts the processes on it at once, and times from their spawn until
`GET /api/failed-requests` says 0; the CRM must then hold exactly one record per customer
(`tests/e2e/test_replicas.py` checks order and exactly-once; this phase only times).

It runs twice, against two kinds of CRM:

- **remote** (the verdict): the CRM mock answers after `SCALE_CRM_LATENCY_MS` (50 ms), as
  a CRM across a network does. One process then drains at most `RETRY_CONCURRENCY` calls
  per latency (16 / 50 ms = 320/s) whatever its CPU, and replicas add their own slots:
  the case scaling out is for.
- **local** (for the record): the mock answers at once, so the drain is bound by CPU. On
  a 2-core machine the one process, PostgreSQL and the CRM mock (about 1.3 ms of CPU per
  POST) already share both cores, and two more processes only add contention: the ratio
  there says what the hardware gives, not what the engine does.
"""

from __future__ import annotations

import time
from typing import Any

from context import Bench
from harness import BenchError, ratio, say
from seed import seed_backlog

SCALE_CRM_LATENCY_MS = 50


async def _drain_with(bench: Bench, processes: int, n: int, latency_ms: int) -> dict[str, Any]:
    name = f"p8-{latency_ms}ms-{processes}"
    url = await bench.new_database(f"{name}-database")
    await seed_backlog(url, n)
    crm = await bench.start_crm(f"{name}-crm")
    if latency_ms:
        await bench.set_faults(crm, latencyMs=latency_ms)
    spawned = time.monotonic()
    services = [bench.spawn_service(f"{name}-service-{i}", crm, url) for i in range(processes)]

    async def drained() -> bool:
        try:
            return await bench.failed_total(services[0]) == 0
        except Exception:  # not listening yet
            return False

    await bench.wait_for(
        f"{processes} processes to drain {n}",
        drained,
        bench.params.drain_deadline(n),
        [*services, crm],
        interval=0.2,
    )
    seconds = time.monotonic() - spawned
    records = int((await bench.get_json(f"{crm.base_url}/api/crm/customers", limit=1))["total"])
    if records != n:
        raise BenchError(f"the CRM holds {records} records after the drain, not {n}")
    bench.servers.stop_all()
    rate = n / seconds
    say(f"  {processes} process(es), CRM +{latency_ms} ms: {n} in {seconds:.1f} s = {rate:.0f}/s")
    return {"processes": processes, "seconds": seconds, "perSecond": rate}


async def _one_against_three(bench: Bench, n: int, latency_ms: int) -> dict[str, Any]:
    one = await _drain_with(bench, 1, n, latency_ms)
    three = await _drain_with(bench, 3, n, latency_ms)
    return {
        "crmLatencyMs": latency_ms,
        "one": one,
        "three": three,
        "ratio": ratio(three["perSecond"], one["perSecond"]),
    }


async def scale_out(bench: Bench) -> dict[str, Any]:
    if bench.database.kind != "postgresql":
        return {"skipped": True}
    n = bench.params.scale_backlog
    say(f"phase 8: the drain of {n} by one service process, then by three")
    return {
        "backlog": n,
        "remote": await _one_against_three(bench, n, SCALE_CRM_LATENCY_MS),
        "local": await _one_against_three(bench, n, 0),
    }
