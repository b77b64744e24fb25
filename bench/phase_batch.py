"""Phase 10: the drain with batches (the CRM mock's batch endpoint, `CRM_BATCH_SIZE=100`)
against one call per change, and the same under a CRM rate limit.

Issue 16 asks, each from one run: the drain of the `BENCH_BACKLOG` (20,000) backlog with
batches of 100 at >= 3x the one-per-call drain of phase 3 in the same run; and against the
mock limited to `LIMIT_PER_SECOND` (10) calls a second (`rateLimitPerSecond`, 429 with
`Retry-After: 1` past it), >= 800 customers a second with none dead. No
`CRM_MAX_REQUESTS_PER_SECOND` is set: the 429s alone teach the service the CRM's pace.
Rates are counted from the service's spawn to the empty outbox, as phase 3's; every
request must end delivered, one CRM record each.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from context import Bench
from harness import BenchError, ratio, say, wait_healthy
from seed import seed_backlog

BATCH_SIZE = 100
LIMIT_PER_SECOND = 10


async def _drain(bench: Bench, tag: str, n: int, limit: int | None) -> dict[str, Any]:
    url = await bench.new_database(f"{tag}-database")
    await seed_backlog(url, n)
    crm = await bench.start_crm(f"{tag}-crm")
    if limit is not None:
        await bench.set_faults(crm, rateLimitPerSecond=limit, retryAfterSeconds=1)
    spawned = time.monotonic()
    service = bench.spawn_service(f"{tag}-service", crm, url, CRM_BATCH_SIZE=str(BATCH_SIZE))
    await wait_healthy(service)

    async def drained() -> bool:
        return await bench.failed_total(service) == 0

    deadline = bench.params.drain_deadline(n)
    await bench.wait_for(f"the batched drain of {n}", drained, deadline, [service, crm], 0.5)
    seconds = time.monotonic() - spawned
    dead = await bench.failed_total(service, status="dead")
    if limit is not None:
        await bench.set_faults(crm, rateLimitPerSecond=None)  # so our own reads go through
    records = int((await bench.get_json(f"{crm.base_url}/api/crm/customers", limit=1))["total"])
    calls = Counter(
        (e["idempotencyKey"], int(e["status"]))
        for e in await bench.crm_log(crm)
        if e["method"] == "POST"
    )
    bench.servers.stop_all()
    if records != n:
        raise BenchError(f"the CRM holds {records} records after the batched drain, not {n}")
    refused = sum(1 for (_, status) in calls if status == 429)
    accepted = sum(1 for (_, status) in calls if 200 <= status < 300)
    return {
        "backlog": n,
        "secondsFromSpawn": seconds,
        "perSecond": n / seconds,
        "dead": dead,
        "callsAccepted": accepted,
        "callsAnswered429": refused,
    }


async def batched_drain(bench: Bench, one_per_call: float) -> dict[str, Any]:
    """`one_per_call`: phase 3's drain rate in this run (NaN when it was not measured)."""
    n = bench.params.backlog
    say(f"phase 10: drain of {n} with batches of {BATCH_SIZE}, then at {LIMIT_PER_SECOND} calls/s")
    batched = await _drain(bench, "p10", n, None)
    say(
        f"  batches: {n} in {batched['secondsFromSpawn']:.1f} s = {batched['perSecond']:.0f}/s"
        f" ({batched['callsAccepted']} calls); one per call: {one_per_call:.0f}/s"
    )
    limited = await _drain(bench, "p10-limited", n, LIMIT_PER_SECOND)
    say(
        f"  at {LIMIT_PER_SECOND} calls/s: {limited['perSecond']:.0f} customers/s,"
        f" {limited['callsAccepted']} calls accepted, {limited['callsAnswered429']} answered"
        f" 429, {limited['dead']} dead"
    )
    return {
        "batchSize": BATCH_SIZE,
        "batched": batched,
        "onePerCallPerSecond": one_per_call,
        "ratio": ratio(batched["perSecond"], one_per_call),
        "limitPerSecond": LIMIT_PER_SECOND,
        "limited": limited,
    }
