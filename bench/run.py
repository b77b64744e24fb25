"""`make bench`: the benchmark of the README's "Measure it", on real processes over loopback.

Starts `crm-mock serve`, `customer-service serve` and the seed's design (`seed_app.py`) on
free ports, each with its own databases in a temporary folder, and measures, each against
a baseline taken in the same run (`bench/README.md` says what each number means):

1. synced writes per second and service CPU per synced write, crm-sync against the seed's
   design, and sync on against sync off (`phase_throughput`);
2. write latency with the CRM slowed by 500 ms against a healthy CRM (`phase_latency`);
3. the drain of a 20,000 backlog against the CRM mock's own maximum (`phase_drain`);
4. the delay from the CRM's return to the first delivered retry (`phase_recovery`);
5. sync lag p50 and p99 at half the sync-off capacity of 1 (`phase_latency`);
6. peak memory draining 20,000 and 100,000 (`phase_drain`);
7. throughput and sync lag in Kafka mode against the HTTP figures (`kafka_phase`);
8. on PostgreSQL, the drain of one backlog by three service processes against one
   (`phase_scale`);
9. the drain of a backlog against a CRM limited to 50 calls a second (`phase_rate_limit`);
10. the drain with batches of 100 against one call per change, and at 10 calls a second
   (`phase_batch`);
11. the drain through the CRM mock's HubSpot face at 10 calls a second (`phase_hubspot`);
12. the drain through the CRM mock's Salesforce face against one call per change
   (`phase_salesforce`);
13. `customer-service sink` through the HubSpot face with batches against one call per
   event (`phase_sink`).

Runs on SQLite, then on PostgreSQL (`BENCH_DATABASES`, `BENCH_DATABASE_URL`), prints a
table for each (`report`) and writes `bench/results.json` and `bench/results.md`;
`BENCH_SKIP=kafka,bigDrain` leaves phases out (names: throughput, latency, drain,
bigDrain, recovery, kafka, scaleOut, rateLimit, batches, hubspot, salesforce, sink).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from context import LAG_TARGET_MS, Bench, Params
from harness import BenchError, Database, ProcessError, Servers, rounded, say
from kafka_phase import kafka_figures
from phase_batch import batched_drain
from phase_drain import RETRY_CONCURRENCY, drain
from phase_hubspot import hubspot_drain
from phase_latency import CRM_SLOW_MS, latency_and_lag
from phase_rate_limit import rate_limited_drain
from phase_recovery import RETRY_INTERVAL_SECONDS, recovery
from phase_salesforce import salesforce_drain
from phase_scale import scale_out
from phase_sink import sink_drain
from phase_throughput import throughput
from report import build_table, markdown_table, print_table

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"
MARKDOWN_PATH = Path(__file__).resolve().parent / "results.md"
# Without a measured sync-off capacity (phase 1 skipped or failed), the lag's rate.
FALLBACK_LAG_RATE = 10.0


def lag_rate(params: Params, metrics: dict[str, Any]) -> float:
    """`BENCH_LAG_RATE`, else half the sync-off capacity measured in phase 1."""
    if params.lag_rate is not None:
        return params.lag_rate
    capacity = metrics.get("throughput", {}).get("syncOff", {}).get("perSecond", math.nan)
    return capacity / 2 if math.isfinite(capacity) else FALLBACK_LAG_RATE


def _drain_rate(metrics: dict[str, Any]) -> float:
    rate = metrics.get("drain", {}).get("perSecond", math.nan)
    return float(rate)


async def run_all(params: Params, servers: Servers, database: Database) -> dict[str, Any]:
    bench = Bench(params, servers, database)
    metrics: dict[str, Any] = {}
    phases: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        ("throughput", lambda: throughput(bench)),
        ("latency", lambda: latency_and_lag(bench, lag_rate(params, metrics))),
        ("drain", lambda: drain(bench, params.backlog, "p3", crm_max=True)),
        ("bigDrain", lambda: drain(bench, params.big_backlog, "p6", crm_max=False)),
        ("recovery", lambda: recovery(bench)),
        ("kafka", lambda: kafka_figures(bench, lag_rate(params, metrics))),
        ("scaleOut", lambda: scale_out(bench)),
        ("rateLimit", lambda: rate_limited_drain(bench)),
        ("batches", lambda: batched_drain(bench, _drain_rate(metrics))),
        ("hubspot", lambda: hubspot_drain(bench)),
        ("salesforce", lambda: salesforce_drain(bench, _drain_rate(metrics))),
        ("sink", lambda: sink_drain(bench)),
    ]
    try:
        for key, phase in phases:
            if key in params.skip:
                metrics[key] = {"skipped": True}
                continue
            started = time.monotonic()
            try:
                metrics[key] = await phase()
            except (ProcessError, httpx.HTTPError) as error:
                say(f"  {key} not measured: {error}")
                metrics[key] = {"error": str(error)}
            finally:
                bench.servers.stop_all()
            metrics.setdefault(key, {})["phaseSeconds"] = time.monotonic() - started
    finally:
        await bench.close()
    return metrics


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/crm_sync_bench"
DATABASE_KINDS = ("sqlite", "postgresql")


def databases_from_env() -> list[Database]:
    """`BENCH_DATABASES` (default both, SQLite first); PostgreSQL at `BENCH_DATABASE_URL`."""
    kinds = [k.strip() for k in os.environ.get("BENCH_DATABASES", "sqlite,postgresql").split(",")]
    unknown = [k for k in kinds if k not in DATABASE_KINDS]
    if unknown or not any(kinds):
        raise BenchError(f"BENCH_DATABASES: use sqlite, postgresql or both, not {unknown}")
    url = os.environ.get("BENCH_DATABASE_URL", "").strip() or DEFAULT_POSTGRES_URL
    return [Database(url if kind == "postgresql" else None) for kind in kinds if kind]


def parameters(params: Params) -> dict[str, Any]:
    return {
        "backlog": params.backlog,
        "bigBacklog": params.big_backlog,
        "writers": params.writers,
        "writeSeconds": params.write_seconds,
        "latencyWriters": params.latency_writers,
        "latencyWrites": params.latency_writes,
        "crmSlowMs": CRM_SLOW_MS,
        "crmMaxSeconds": params.crm_seconds,
        "recoveryCustomers": params.recovery_customers,
        "retryConcurrency": RETRY_CONCURRENCY,
        "retryIntervalSeconds": RETRY_INTERVAL_SECONDS,
        "lagRate": params.lag_rate,
        "lagSeconds": params.lag_seconds,
        "lagTargetMs": LAG_TARGET_MS,
        "scaleBacklog": params.scale_backlog,
        "limitBacklog": params.limit_backlog,
        "skipped": sorted(params.skip),
    }


def run_one(params: Params, database: Database, workdir: Path) -> dict[str, Any]:
    """Every phase on one database; stops what it started, drops its PostgreSQL database."""
    servers = Servers(workdir / database.kind)
    say(
        f"crm-sync benchmark on {database.kind}: backlogs {params.backlog} and "
        f"{params.big_backlog}, {os.cpu_count()} cores; work folder {servers.workdir}"
    )
    clock = time.monotonic()
    try:
        metrics = asyncio.run(run_all(params, servers, database))
    finally:
        # Whatever happened above, nothing this run started keeps running.
        servers.stop_all()
        if database.postgres_url is not None:
            try:
                asyncio.run(database.drop())
            except Exception as error:
                say(f"could not drop the benchmark database: {error!r}")
    rows = build_table(metrics, database.kind)
    print(f"\n{database.kind}:")
    print_table(rows)
    return {
        "durationSeconds": time.monotonic() - clock,
        "metrics": metrics,
        "table": rows,
    }


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        params = Params.from_env()
        databases = databases_from_env()
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="crm-sync-bench-"))
    keep = os.environ.get("BENCH_KEEP", "") not in ("", "0")
    started = datetime.now(UTC)
    clock = time.monotonic()
    failed = True
    try:
        runs = {database.kind: run_one(params, database, workdir) for database in databases}
        results = {
            "timestamp": started.isoformat(),
            "durationSeconds": time.monotonic() - clock,
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpuCount": os.cpu_count(),
            "parameters": parameters(params),
            "runs": runs,
        }
        RESULTS_PATH.write_text(json.dumps(rounded(results), indent=2) + "\n")
        MARKDOWN_PATH.write_text(
            "".join(f"### {kind}\n\n{markdown_table(run['table'])}\n" for kind, run in runs.items())
        )
        say(f"wrote {RESULTS_PATH} and {MARKDOWN_PATH} in {time.monotonic() - clock:.0f} s")
        failed = any("error" in m for run in runs.values() for m in run["metrics"].values())
        return 1 if failed else 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if keep or failed:
            say(f"logs and databases kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
