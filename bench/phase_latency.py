"""Phases 2 and 5: write latency with a CRM slowed by 500 ms, and the healthy sync lag.

One service and CRM mock. Latency: `BENCH_LATENCY_WRITERS` writers make
`BENCH_LATENCY_WRITES` writes with a healthy CRM, then again with the CRM answering 500 ms
late; writes never wait for the CRM, so the two should be alike. Sync lag: open loop at a
steady rate, by default half the sync-off capacity measured in phase 1 (`BENCH_LAG_RATE`
sets it), for `BENCH_LAG_SECONDS`; each write's lag runs from its `createdAt` to the CRM's
`receivedAt` of the successful POST carrying its id.
"""

from __future__ import annotations

from typing import Any

from context import Bench
from harness import ratio, say
from load import paced_load, write_load

CRM_SLOW_MS = 500


async def latency_and_lag(bench: Bench, lag_rate: float) -> dict[str, Any]:
    p = bench.params
    say(
        f"phase 2 and 5: write latency and sync lag, {p.latency_writers} writers x "
        f"{p.latency_writes} writes, healthy CRM then CRM +{CRM_SLOW_MS} ms"
    )
    crm = await bench.start_crm("p2-crm")
    service = await bench.start_service("p2-service", crm)
    await write_load(service, "warm", p.latency_writers, count=20)
    await bench.wait_drained(service, crm)

    healthy = await write_load(service, "healthy", p.latency_writers, count=p.latency_writes)
    await bench.wait_drained(service, crm)
    say(
        f"  healthy: p50 {healthy.summary()['latencyMs']['p50']:.1f} ms, "
        f"p99 {healthy.summary()['latencyMs']['p99']:.1f} ms"
    )
    # Sync lag under a steady, moderate load (open loop), not at saturation, where
    # it would measure the queue in front of a busy machine rather than the sync.
    paced = await paced_load(service, "lag", lag_rate, max(1, round(lag_rate * p.lag_seconds)))
    await bench.wait_drained(service, crm)
    lag = Bench.match_lag(paced, await bench.crm_log(crm))
    lag["ratePerSecond"] = lag_rate
    say(
        f"  sync lag at {lag_rate:.0f} writes/s: "
        f"p50 {lag['p50Ms']:.1f} ms, p99 {lag['p99Ms']:.1f} ms "
        f"(after the answer: p50 {lag['fromAnswerMs']['p50']:.1f} ms, "
        f"p99 {lag['fromAnswerMs']['p99']:.1f} ms)"
    )

    await bench.set_faults(crm, latencyMs=CRM_SLOW_MS)
    slow = await write_load(service, "slow", p.latency_writers, count=p.latency_writes)
    undelivered = await bench.failed_total(service)
    await bench.set_faults(crm, latencyMs=0)
    say(
        f"  CRM +{CRM_SLOW_MS} ms: p50 {slow.summary()['latencyMs']['p50']:.1f} ms, "
        f"p99 {slow.summary()['latencyMs']['p99']:.1f} ms "
        f"({undelivered} requests undelivered when the last write answered)"
    )
    await bench.wait_drained(service, crm)
    bench.servers.stop_all()

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
