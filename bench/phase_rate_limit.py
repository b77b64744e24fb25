"""Phase 9: the drain of a backlog against a CRM that allows `LIMIT_PER_SECOND` (50) calls a
second and answers the rest 429 with `Retry-After: 1` (the mock's `rateLimitPerSecond`).

Issue 7 asks that a 20,000 backlog drain at close to 50/s with no request marked dead:
the service, told to wait by a 429, pauses every call of the process, not only that
request, so the CRM's second is neither wasted nor flooded. `BENCH_LIMIT_BACKLOG` (2,000
by default, 40 s; 20,000 takes about 7 minutes) pending CREATEs are seeded into a fresh
database and drained with the service's default settings (no `CRM_MAX_REQUESTS_PER_SECOND`:
the 429s alone pace it). The rate is counted from the CRM's first accepted call to its
last (the service's start-up is not the CRM's limit), and every request must end
delivered: none dead, exactly one record each.
"""

from __future__ import annotations

import time
from collections import Counter
from itertools import pairwise
from typing import Any

from context import Bench
from harness import BenchError, parse_time, ratio, say
from seed import seed_backlog

LIMIT_PER_SECOND = 50


async def rate_limited_drain(bench: Bench) -> dict[str, Any]:
    n = bench.params.limit_backlog
    say(f"phase 9: drain of {n} against a CRM limited to {LIMIT_PER_SECOND} calls/s")
    url = await bench.new_database("p9-database")
    await seed_backlog(url, n)
    crm = await bench.start_crm("p9-crm")
    await bench.set_faults(crm, rateLimitPerSecond=LIMIT_PER_SECOND, retryAfterSeconds=1)
    spawned = time.monotonic()
    service = await bench.start_service("p9-service", crm, url)

    async def drained() -> bool:
        return await bench.failed_total(service) == 0

    deadline = 60.0 + 3 * n / LIMIT_PER_SECOND
    await bench.wait_for(f"the drain of {n} at the limit", drained, deadline, [service, crm], 0.5)
    seconds = time.monotonic() - spawned
    dead = await bench.failed_total(service, status="dead")
    await bench.set_faults(crm, rateLimitPerSecond=None)  # so our own reads go through
    records = int((await bench.get_json(f"{crm.base_url}/api/crm/customers", limit=1))["total"])
    if records != n:
        raise BenchError(f"the CRM holds {records} records after the drain, not {n}")
    posts = [e for e in await bench.crm_log(crm) if e["method"] == "POST"]
    statuses = Counter(int(e["status"]) for e in posts)
    accepted = sorted(parse_time(e["receivedAt"]) for e in posts if 200 <= e["status"] < 300)
    active = (accepted[-1] - accepted[0]).total_seconds()
    per_second = (len(accepted) - 1) / active if active > 0 else float("nan")
    # Where a slow drain lost its time: the longest wait between two accepted calls.
    longest_gap = max(
        ((b - a).total_seconds() for a, b in pairwise(accepted)),
        default=0.0,
    )
    bench.servers.stop_all()
    say(
        f"  {n} in {seconds:.1f} s from spawn; {per_second:.1f}/s from the first accepted call"
        f" to the last; {statuses.get(429, 0)} answered 429; {dead} dead; longest wait"
        f" between accepted calls {longest_gap:.2f} s"
    )
    return {
        "backlog": n,
        "limitPerSecond": LIMIT_PER_SECOND,
        "secondsFromSpawn": seconds,
        "perSecond": per_second,
        "answered429": statuses.get(429, 0),
        "dead": dead,
        "longestGapSeconds": longest_gap,
        "ratio": ratio(per_second, LIMIT_PER_SECOND),
    }
