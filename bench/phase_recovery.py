"""Phase 4: from the CRM's return to the first delivered retry.

The CRM goes down, `BENCH_RECOVERY_CUSTOMERS` writes fail against it, it comes back; the
delay runs to the CRM's `receivedAt` of the first successful retry, against
`RETRY_INTERVAL_SECONDS` (60): well under it means the recovery probe drained the backlog.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from context import Bench
from harness import BenchError, parse_time, say
from load import write_load

RETRY_INTERVAL_SECONDS = 60.0


async def recovery(bench: Bench) -> dict[str, Any]:
    p = bench.params
    say(
        f"phase 4: CRM down, {p.recovery_customers} writes, CRM back: delay to the "
        f"first delivered retry (RETRY_INTERVAL_SECONDS={RETRY_INTERVAL_SECONDS:.0f}, "
        "RECOVERY_PROBE_SECONDS=1)"
    )
    crm = await bench.start_crm("p4-crm")
    service = await bench.start_service("p4-service", crm)
    await asyncio.sleep(2.0)  # let the start-up pass and probe settle
    await bench.set_faults(crm, down=True, statusCode=503)
    created = await write_load(service, "outage", 1, count=p.recovery_customers)

    async def all_held() -> bool:
        # The first write fails; with the circuit breaker open, the others are held
        # (pending) rather than sent. Either way none is delivered.
        failed = await bench.failed_total(service, status="failed")
        return failed >= 1 and await bench.failed_total(service) == created.ok

    await bench.wait_for("the writes to fail against the down CRM", all_held, 30, [service])
    # Past the first backoff (about 1 s): only the probe or the 60 s tick can retry now.
    await asyncio.sleep(3.0)

    back_at = datetime.now(UTC)
    back_mono = time.monotonic()
    await bench.set_faults(crm, down=False)
    first: datetime | None = None
    drained: float | None = None
    timeout = RETRY_INTERVAL_SECONDS + 30
    while first is None or drained is None:
        service.check_alive()
        if first is None:
            for entry in await bench.crm_log(crm, limit=500):
                when = parse_time(entry["receivedAt"])
                if entry["method"] != "GET" and 200 <= entry["status"] < 300 and when >= back_at:
                    first = when if first is None else min(first, when)
        if drained is None and await bench.failed_total(service) == 0:
            drained = time.monotonic() - back_mono
        if time.monotonic() - back_mono > timeout:
            raise BenchError(f"no retry was delivered within {timeout:.0f} s of the CRM's return")
        await asyncio.sleep(0.05)
    bench.servers.stop_all()
    delay = (first - back_at).total_seconds()
    say(f"  first delivered retry {delay:.2f} s after the CRM came back; all in {drained:.2f} s")
    return {
        "customers": created.ok,
        "retryIntervalSeconds": RETRY_INTERVAL_SECONDS,
        "recoveryProbeSeconds": 1.0,
        "firstDeliverySeconds": delay,
        "drainedSeconds": drained,
        "ratio": delay / RETRY_INTERVAL_SECONDS,
    }
