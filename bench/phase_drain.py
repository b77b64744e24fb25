"""Phases 3 and 6: the drain of a backlog, its rate against the CRM mock's maximum, and the
service's peak memory while draining.

The backlog is written straight into a fresh database (`seed.seed_backlog`); the service
starts on it once with `SYNC_ENABLED=false` for its idle RSS, then with sync on, and the
drain runs from the process's start until `GET /api/failed-requests` says 0, its RSS
sampled from `/proc/<pid>/status` every 0.1 s (and `VmHWM` at the end). Row 3's ratio
takes the drain from the moment the service answers `/health` (its start-up, 0.8-0.9 s
on 2 cores, is reported beside it, and the ratio from the spawn too): the CRM mock's
maximum it is compared with leaves out its own first second of warm-up, so the drain
leaves out the service's. `perSecond` stays the rate from the spawn: the baseline of the
batched drains of phases 10 and 12, which are timed from their spawn too. The run drains
`BENCH_BACKLOG` (20,000) and `BENCH_BIG_BACKLOG` (100,000): memory must not grow with the
backlog. Around the first drain, the CRM mock's own maximum: POSTs straight to it with the
service's concurrency (`RETRY_CONCURRENCY`, 16), once just before the drain (on a fresh
mock) and once just after it (on the drain's mock); row 3 takes their mean (since
2026-12-07: the machine's speed swings within a minute, bench/README).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from typing import Any

from context import Bench
from crm_rate import crm_max_rate
from harness import (
    BenchError,
    Server,
    parse_time,
    process_cpu_seconds,
    ratio,
    rss_kib,
    say,
    wait_healthy,
)
from seed import seed_backlog

RETRY_CONCURRENCY = 16
# How often the drain asks whether the backlog is empty: the end is known within this
# (0.5 s before 2026-12-06 added 0.25 s on average to a drain of about 15 s: 1.7 %).
DRAIN_POLL_SECONDS = 0.05
# Far from the end it asks less often: each question counts the backlog, work the service
# does on its one event loop beside the drain (every 50 ms, a count over 20,000 rows).
# The next question comes after a quarter of the time the rest should take at the rate so
# far, at most this, so the end is still known within DRAIN_POLL_SECONDS.
DRAIN_POLL_MAX_SECONDS = 0.5


def next_poll_seconds(left: int, done: int, elapsed: float) -> float:
    """How long to wait before asking again, `left` requests to go after `done` in
    `elapsed` seconds (pure)."""
    if done <= 0 or elapsed <= 0:
        return DRAIN_POLL_SECONDS
    rest = left / (done / elapsed)
    return min(DRAIN_POLL_MAX_SECONDS, max(DRAIN_POLL_SECONDS, rest / 4))


async def drain(bench: Bench, n: int, tag: str, *, crm_max: bool) -> dict[str, Any]:
    """Drain a backlog of `n`; with `crm_max`, also the CRM mock's own maximum rate."""
    p = bench.params
    deadline = p.drain_deadline(n)
    say(f"phase 3 and 6: drain of a {n}-request backlog, peak memory")
    url = await bench.new_database(f"{tag}-database")
    seeding = time.monotonic()
    await seed_backlog(url, n)
    say(
        f"  seeded {n} customers and their pending CREATE requests "
        f"in {time.monotonic() - seeding:.1f} s"
    )
    crm = await bench.start_crm(f"{tag}-crm")

    # Idle baseline: the same database and binary, with delivery off.
    idle = await bench.start_service(f"{tag}-idle", crm, url, SYNC_ENABLED="false")
    seeded = await bench.failed_total(idle)
    if seeded != n:
        raise BenchError(f"the service sees {seeded} pending requests, not {n}")
    await asyncio.sleep(2.0)
    samples: list[int] = []
    for _ in range(10):
        samples.append(rss_kib(idle.pid).get("VmRSS", 0))
        await asyncio.sleep(0.2)
    idle_kib = sorted(samples)[len(samples) // 2]
    bench.servers.stop(idle)
    say(f"  idle RSS (SYNC_ENABLED=false, same database): {idle_kib / 1024:.1f} MiB")

    before: dict[str, Any] | None = None
    if crm_max:
        # The machine's speed swings within a minute (bench/README, 2026-12-07 afternoon):
        # the CRM's maximum is measured on each side of the drain and the two averaged.
        before = await crm_maximum(bench, await bench.start_crm(f"{tag}-crm-max"), "before")

    say(f"  starting the service with sync on; deadline {deadline:.0f} s")
    spawned = time.monotonic()
    crm_cpu = process_cpu_seconds(crm.pid)
    service = bench.spawn_service(f"{tag}-drain", crm, url)
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
            left = await bench.failed_total(service)
            now = time.monotonic()
            if left == 0:
                break
            if now - spawned > deadline:
                raise BenchError(f"the drain did not finish in {deadline:.0f} s ({left} left)")
            if now - last_report >= 15:
                done = n - left
                say(f"  drain: {done}/{n} delivered, {done / (now - spawned):.0f}/s so far")
                last_report = now
            await asyncio.sleep(next_poll_seconds(left, n - left, now - spawned))
        drained_after = time.monotonic() - spawned
        crm_cpu = process_cpu_seconds(crm.pid) - crm_cpu
        hwm_kib = rss_kib(service.pid).get("VmHWM", 0)
    finally:
        sampling = False
        await sampler
    peak_kib = max(peak_kib, hwm_kib)
    drain_rate = n / drained_after
    from_ready = n / (drained_after - ready_after)
    say(
        f"  drained {n} in {drained_after:.1f} s from spawn = {drain_rate:.1f}/s "
        f"({from_ready:.1f}/s from /health at {ready_after:.2f} s); "
        f"peak RSS {peak_kib / 1024:.1f} MiB; the CRM mock {crm_cpu / n * 1000:.2f} ms of "
        f"its CPU a POST, busy {crm_cpu / drained_after:.2f} of a core"
    )
    bench.servers.stop(service)

    crm_page = await bench.get_json(f"{crm.base_url}/api/crm/customers", limit=1)
    log = await bench.crm_log(crm)
    posts = [e for e in log if e["method"] == "POST"]
    by_status = Counter(str(e["status"]) for e in posts)
    ok_times = sorted(parse_time(e["receivedAt"]) for e in posts if 200 <= e["status"] < 300)
    active = (ok_times[-1] - ok_times[0]).total_seconds() if len(ok_times) > 1 else math.nan
    if int(crm_page["total"]) != n:
        say(f"  WARNING: the CRM holds {crm_page['total']} records, expected {n}")

    maximum: dict[str, Any] = {"perSecond": math.nan}
    if before is not None:
        after = await crm_maximum(bench, crm, "after")
        maximum = {
            "perSecond": (before["perSecond"] + after["perSecond"]) / 2,
            "before": before,
            "after": after,
        }
        say(f"  CRM mock maximum, the mean of before and after: {maximum['perSecond']:.1f}/s")
    bench.servers.stop_all()

    rss_mib = peak_kib / 1024
    idle_mib = idle_kib / 1024
    return {
        "backlog": n,
        "retryConcurrency": RETRY_CONCURRENCY,
        "deadlineSeconds": deadline,
        "readyAfterSeconds": ready_after,
        "drainedAfterSeconds": drained_after,
        "perSecond": drain_rate,
        "perSecondFromReady": from_ready,
        "crmCpuMsPerPost": crm_cpu / n * 1000,
        "crmRecords": int(crm_page["total"]),
        "crmPostsByStatus": dict(by_status),
        "crmFirstToLastSuccessSeconds": active,
        "perSecondFirstToLastSuccess": (len(ok_times) - 1) / active if active else math.nan,
        "crmMax": maximum,
        "ratio": ratio(from_ready, maximum["perSecond"]),
        "ratioFromSpawn": ratio(drain_rate, maximum["perSecond"]),
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


async def crm_maximum(bench: Bench, crm: Server, when: str) -> dict[str, Any]:
    """The CRM mock's own maximum (`crm_rate.py`), `when` (before or after the drain): on
    a fresh mock before it, on the drain's own mock after it. The fresh one is stopped."""
    seconds = bench.params.crm_seconds
    say(f"  CRM mock maximum {when} the drain: {RETRY_CONCURRENCY} POSTs at once, {seconds:.0f} s")
    maximum = await crm_max_rate(crm, RETRY_CONCURRENCY, seconds)
    say(
        f"  CRM mock: {maximum['perSecond']:.1f} POSTs/s, "
        f"{maximum['cpuMsPerPost']:.2f} ms of its CPU each"
    )
    if when == "before":
        bench.servers.stop(crm)
    return maximum
