"""Phase 8 (PostgreSQL only): the drain of one backlog by three service processes against
one process, on the same database server and the same kind of fresh CRM mock.

Each run seeds `BENCH_SCALE_BACKLOG` (5,000) customers with a pending CREATE into a fresh
database, starts the processes on it at once, and times from their spawn until
`GET /api/failed-requests` says 0; the CRM must then hold exactly one record per customer
(`tests/e2e/test_replicas.py` checks order and exactly-once; this phase only times). On
this 2-core machine three processes share two cores with PostgreSQL and the CRM mock,
which takes about 1.3 ms of CPU per POST: the ratio says what scaling out buys when the
CRM, not the service, is the limit.
"""

from __future__ import annotations

import time
from typing import Any

from context import Bench
from harness import BenchError, ratio, say
from seed import seed_backlog


async def _drain_with(bench: Bench, processes: int, n: int) -> dict[str, Any]:
    url = await bench.new_database(f"p8-{processes}-database")
    await seed_backlog(url, n)
    crm = await bench.start_crm(f"p8-{processes}-crm")
    spawned = time.monotonic()
    services = [
        bench.spawn_service(f"p8-{processes}-service-{i}", crm, url) for i in range(processes)
    ]
    deadline = bench.params.drain_deadline(n)
    while True:
        for server in (*services, crm):
            server.check_alive()
        try:
            left = await bench.failed_total(services[0])
        except Exception:  # not listening yet
            left = n
        if left == 0:
            break
        if time.monotonic() - spawned > deadline:
            raise BenchError(f"{processes} processes did not drain {n} in {deadline:.0f} s")
        await bench.wait_for_interval()
    seconds = time.monotonic() - spawned
    records = int((await bench.get_json(f"{crm.base_url}/api/crm/customers", limit=1))["total"])
    if records != n:
        raise BenchError(f"the CRM holds {records} records after the drain, not {n}")
    bench.servers.stop_all()
    say(f"  {processes} process(es): {n} in {seconds:.1f} s = {n / seconds:.0f}/s")
    return {"processes": processes, "seconds": seconds, "perSecond": n / seconds}


async def scale_out(bench: Bench) -> dict[str, Any]:
    if bench.database.kind != "postgresql":
        return {"skipped": True}
    n = bench.params.scale_backlog
    say(f"phase 8: the drain of {n} by one service process, then by three")
    one = await _drain_with(bench, 1, n)
    three = await _drain_with(bench, 3, n)
    return {
        "backlog": n,
        "one": one,
        "three": three,
        "ratio": ratio(three["perSecond"], one["perSecond"]),
    }
