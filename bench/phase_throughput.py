"""Phase 1: synced writes per second and the service's CPU per synced write.

Three services, each against a fresh CRM mock, each loaded by `BENCH_WRITERS` writers for
`BENCH_WRITE_SECONDS`: the customer service with `SYNC_ENABLED=false` (it records the CRM
requests but never delivers them: the write alone), the customer service with sync on,
and the seed's design (`seed_app.py`: the write awaits its CRM call). A write of crm-sync
counts as synced once the CRM has it: its synced rate is the writes over the time from the
first write until `GET /api/failed-requests` says 0, and its CPU (utime + stime from
`/proc/<pid>/stat`) is counted over the same span, so the deliveries that trail the load
are paid for. The seed's writes are synced when they answer.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

from context import Bench
from harness import process_cpu_seconds, ratio, say
from load import write_load
from pinning import can_pin, service_alone

SYNCED_WITHIN_SECONDS = 600.0


async def throughput(bench: Bench) -> dict[str, Any]:
    p = bench.params
    say(
        f"phase 1: synced writes, {p.writers} writers for {p.write_seconds:.0f} s each: "
        "crm-sync with sync off, with sync on, the seed's design"
    )
    result: dict[str, Any] = {"writers": p.writers, "seconds": p.write_seconds}
    for label, enabled in (("syncOff", False), ("syncOn", True), ("seed", False)):
        result[label] = await _measure(bench, label, enabled)
    on, off, seed = result["syncOn"], result["syncOff"], result["seed"]
    result["ratio"] = ratio(on["perSecond"], off["perSecond"])
    result["syncedOverSeed"] = ratio(on["syncedPerSecond"], seed["syncedPerSecond"])
    result["cpuOverSeed"] = ratio(on["cpuMsPerWrite"], seed["cpuMsPerWrite"])
    result["cpuOverOff"] = ratio(on["cpuMsPerWrite"], off["cpuMsPerWrite"])
    if p.service_alone and can_pin():
        say("  again with the service on a core of its own (for the record, bench/pinning.py)")
        alone: dict[str, Any] = {
            label: await _measure(bench, label, enabled, alone=True)
            for label, enabled in (("syncOff", False), ("syncOn", True))
        }
        alone["ratio"] = ratio(alone["syncOn"]["perSecond"], alone["syncOff"]["perSecond"])
        result["serviceAlone"] = alone
    return result


async def _measure(bench: Bench, label: str, enabled: bool, alone: bool = False) -> dict[str, Any]:
    """One service (or the seed's design) under the closed-loop load; with `alone`, on a
    core of its own while it is measured."""
    p = bench.params
    # Each its own folder: a fresh CRM mock (ids start at 1 in every service's database,
    # and a CRM already holding them would answer 409s).
    name = f"p1-{label}{'-alone' if alone else ''}"
    crm = await bench.start_crm(f"{name}-crm")
    if label == "seed":
        service = await bench.start_seed_app(name, crm)
    else:
        service = await bench.start_service(
            name,
            crm,
            SYNC_ENABLED="true" if enabled else "false",
        )
    with service_alone(service.pid, [crm.pid]) if alone else contextlib.nullcontext() as pinned:
        await write_load(service, f"{label}-warm", p.writers, count=4 * p.writers)
        if enabled:
            await bench.wait_drained(service, crm)
        cpu_before = process_cpu_seconds(service.pid)
        started = time.monotonic()
        run = await write_load(service, label, p.writers, seconds=p.write_seconds)
        summary = run.summary()
        if enabled:
            summary["undeliveredAtEnd"] = await bench.failed_total(service)
            await bench.wait_drained(service, crm, within=SYNCED_WITHIN_SECONDS, interval=0.05)
        span = time.monotonic() - started
        cpu = process_cpu_seconds(service.pid) - cpu_before
    if pinned is not None:
        summary["postgresMoved"] = pinned.postgres_moved
        summary["postgresNotMoved"] = pinned.postgres_refused
    summary["cpuSeconds"] = cpu
    summary["cpuMsPerWrite"] = cpu / run.ok * 1000
    summary["syncedSeconds"] = span
    summary["syncedPerSecond"] = math.nan if label == "syncOff" else run.ok / span
    say(
        f"  {label}: {run.ok} writes in {run.elapsed:.1f} s = {run.per_second:.1f}/s"
        + (f", all synced after {span:.1f} s" if enabled else "")
        + f"; {summary['cpuMsPerWrite']:.2f} ms CPU a write; errors {dict(run.errors)}"
    )
    bench.servers.stop_all()
    return summary
