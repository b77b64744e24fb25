"""`python bench/profile.py drain|write|lag`: one phase against a live pair, under py-spy.

What `bench/README.md` reports as "what the profile showed" comes from this: it starts the
CRM mock and the customer service (SQLite, or PostgreSQL with `BENCH_DATABASES=postgresql`)
as `make bench` does, runs a drain of `BENCH_BACKLOG` (default 5,000) or a closed-loop
write load (`BENCH_WRITERS` for `BENCH_WRITE_SECONDS`, sync on), or the paced load of
the sync lag phase (`BENCH_LAG_RATE`, default 300 writes/s, for `BENCH_LAG_SECONDS`),
or that paced load in Kafka mode (`kafka`: phase 7's broker, consumer and service), and
records the service (or the CRM mock, with `BENCH_PROFILE_TARGET=crm`; in Kafka mode also
`consumer`) with `py-spy record` (when py-spy is installed: `pip install py-spy`) into
`bench/profile-<phase>.txt` as collapsed stacks, printing the heaviest functions. The
`kafka` phase also prints each process's CPU per write over the paced load; with
`BENCH_KAFKA_PRELOAD=1` it runs phase 7's closed-loop load first, as the bench does.
With `BENCH_LAG_TIMELINE=1` the `lag` and `kafka` phases print the worst lag of each
quarter second of the paced load.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from context import Bench, Params
from harness import Database, Server, Servers, process_cpu_seconds, say, wait_healthy
from kafka_phase import applied_count, start_kafka_set
from load import paced_load, write_load
from pinning import postgres_pids
from seed import seed_backlog

HERE = Path(__file__).resolve().parent


def top_functions(collapsed: Path, limit: int = 40) -> list[tuple[str, float]]:
    """Inclusive share of samples per function (each function once per stack)."""
    total = 0
    inclusive: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for frame in set(stack.split(";")):
            inclusive[frame] += n
    return [(frame, n / total) for frame, n in inclusive.most_common(limit)] if total else []


def py_spy() -> str | None:
    """py-spy on the PATH or beside this Python, if installed."""
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def _postgres_cpu() -> float:
    """CPU seconds of this machine's PostgreSQL processes so far (those alive now)."""
    return sum(process_cpu_seconds(pid) for pid in postgres_pids())


def print_timeline(paced: Any, lags: list[float], bucket: float = 0.25) -> None:
    """The worst lag of the writes made in each `bucket` seconds of the load."""
    created = [t for cid, t in paced.created.items()]
    start = min(created)
    worst: dict[int, float] = {}
    for when, lag in zip(created, lags, strict=False):
        slot = int((when - start).total_seconds() / bucket)
        worst[slot] = max(worst.get(slot, 0.0), lag)
    for slot, lag in sorted(worst.items()):
        print(f"{slot * bucket:6.2f} s  worst lag {lag:7.1f} ms{'  <<<' if lag > 100 else ''}")


def record(spy: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    """`py-spy record` of `pid` into `out` (collapsed stacks), until sent SIGINT."""
    rate = os.environ.get("BENCH_PROFILE_HZ", "200")
    argv = [spy, "record", "--gil", "-r", rate, "-f", "raw", "-o", str(out), "-p", str(pid)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_recording(recorder: subprocess.Popen[bytes] | None, out: Path) -> None:
    if recorder is None:
        return
    recorder.send_signal(2)
    recorder.wait(timeout=60)
    for frame, share in top_functions(out):
        print(f"{share * 100:5.1f} %  {frame}")


async def kafka_lag(bench: Bench, url: str, spy: str | None, target: str, out: Path) -> None:
    """Phase 7's paced load, the chosen process under py-spy once warmed up."""
    params = bench.params
    kafka_set = await start_kafka_set(bench, url)
    processes: dict[str, Server] = {
        "service": kafka_set.service,
        "crm": kafka_set.crm,
        "consumer": kafka_set.consumer,
        "broker": kafka_set.broker,
    }
    warm = 2 * params.writers
    await write_load(kafka_set.service, "kafka-warm", params.writers, count=warm)
    if os.environ.get("BENCH_KAFKA_PRELOAD") == "1":
        # Phase 7's closed-loop load first, as the bench runs it before the paced one.
        loaded = await write_load(
            kafka_set.service, "kafka", params.writers, seconds=params.write_seconds
        )
        warm += loaded.ok

    async def applied(count: int) -> bool:
        return await applied_count(bench, kafka_set.crm) >= count

    await bench.wait_for("the warm-up to be applied", lambda: applied(warm), 60, kafka_set.watched)
    await bench.wait_quiet(kafka_set.service, within=120)
    recorder = record(spy, processes[target].pid, out) if spy is not None else None
    cpu0 = {name: process_cpu_seconds(server.pid) for name, server in processes.items()}
    postgres0 = _postgres_cpu()
    rate = params.lag_rate or 300.0
    paced = await paced_load(kafka_set.service, "kafka-lag", rate, round(rate * params.lag_seconds))
    total = warm + len(paced.created)
    await bench.wait_for(
        "the paced writes to be applied", lambda: applied(total), 120, kafka_set.watched
    )
    cpu = {name: process_cpu_seconds(s.pid) - cpu0[name] for name, s in processes.items()}
    cpu["postgres"] = _postgres_cpu() - postgres0
    lag = Bench.match_lag(paced, await bench.crm_log(kafka_set.crm))
    if os.environ.get("BENCH_LAG_TIMELINE") and lag["unmatched"] == 0:
        print_timeline(paced, lag["lagsMs"])
    say(f"Kafka sync lag at {rate:.0f} writes/s: p50 {lag['p50Ms']:.1f}, p99 {lag['p99Ms']:.1f} ms")
    written = max(1, len(paced.created))
    say("CPU a write: " + ", ".join(f"{n} {c / written * 1000:.2f} ms" for n, c in cpu.items()))
    stop_recording(recorder, out)
    if os.environ.get("BENCH_KEEP_LOGS"):
        for name, server in processes.items():
            shutil.copy(server.log_path, f"{os.environ['BENCH_KEEP_LOGS']}-{name}.log")


async def main(phase: str) -> None:
    params = Params.from_env()
    kind = os.environ.get("BENCH_DATABASES", "sqlite").split(",")[0]
    postgres = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/crm_sync_bench"
    )
    workdir = Path(tempfile.mkdtemp(prefix="crm-sync-profile-"))
    bench = Bench(params, Servers(workdir), Database(postgres if kind == "postgresql" else None))
    spy = py_spy()
    target = os.environ.get("BENCH_PROFILE_TARGET", "service")
    out = HERE / f"profile-{phase}{'' if target == 'service' else '-' + target}.txt"
    try:
        if phase == "kafka":
            await kafka_lag(bench, await bench.new_database("service-db"), spy, target, out)
            return
        crm = await bench.start_crm("crm")
        url = await bench.new_database("service-db")
        n = int(os.environ.get("BENCH_BACKLOG", "5000"))
        if phase == "drain":
            await seed_backlog(url, n)
            service = bench.spawn_service("service", crm, url, SYNC_ENABLED="true")
        else:
            service = await bench.start_service("service", crm, url)
        pid = crm.pid if target == "crm" else service.pid
        recorder = record(spy, pid, out) if spy is not None else None
        started = time.monotonic()
        cpu0 = process_cpu_seconds(service.pid)
        await wait_healthy(service)
        if phase == "drain":
            await bench.wait_drained(service, crm, within=600, interval=0.2)
            span = time.monotonic() - started
            cpu = process_cpu_seconds(service.pid) - cpu0
            say(f"drained {n} in {span:.1f} s = {n / span:.0f}/s; {cpu / n * 1000:.2f} ms CPU each")
        elif phase == "lag":
            rate = params.lag_rate or 300.0
            paced = await paced_load(service, "lag", rate, round(rate * params.lag_seconds))
            await bench.wait_drained(service, crm, within=600, interval=0.05)
            lag = Bench.match_lag(paced, await bench.crm_log(crm))
            if os.environ.get("BENCH_LAG_TIMELINE") and lag["unmatched"] == 0:
                print_timeline(paced, lag["lagsMs"])
            p50, p99 = lag["p50Ms"], lag["p99Ms"]
            say(f"sync lag at {rate:.0f} writes/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        else:
            run = await write_load(service, "profile", params.writers, seconds=params.write_seconds)
            await bench.wait_drained(service, crm, within=600, interval=0.05)
            span = time.monotonic() - started
            cpu = process_cpu_seconds(service.pid) - cpu0
            say(
                f"{run.ok} writes at {run.per_second:.0f}/s, synced after {span:.1f} s "
                f"= {run.ok / span:.0f}/s; {cpu / run.ok * 1000:.2f} ms CPU per synced write"
            )
        stop_recording(recorder, out)
    finally:
        await bench.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "drain"))
