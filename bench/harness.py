"""The benchmark's plumbing: server processes, databases, CPU, RSS and percentiles.

Nothing here measures anything; the phases do. Every process started through `Servers`
is stopped by `Servers.stop_all` (terminate, then kill after a deadline), which `run.py`
calls in a `finally`, so an error or Ctrl-C leaves nothing running. Free ports and the
server processes themselves come from `scripts/processes.py`, shared with `make demo`.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

# The server-process helpers are shared with scripts/demo.py: they live in scripts/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from processes import (
    ProcessError,
    ServerProcess,
    console_script,
    free_port,
    wait_healthy_async,
)

# A running server, as the phases call it.
Server = ServerProcess

__all__ = ["ProcessError", "Server", "console_script", "free_port"]

STARTUP_SECONDS = 60.0

# Settings of either service that the caller's environment must not leak into ours.
OWN_SETTINGS = (
    "DATABASE_URL",
    "CRM_DATABASE_URL",
    "HOST",
    "PORT",
    "CRM_BASE_URL",
    "CRM_API_TOKEN",
    "CRM_TIMEOUT_SECONDS",
    "SYNC_MODE",
    "SYNC_ENABLED",
    "RETRY_INTERVAL_SECONDS",
    "RETRY_CONCURRENCY",
    "RETRY_MAX_ATTEMPTS",
    "RETRY_BACKOFF_BASE_SECONDS",
    "RETRY_BACKOFF_MAX_SECONDS",
    "RECOVERY_PROBE_SECONDS",
    "CLAIM_LEASE_SECONDS",
    "API_KEY",
    "LOG_FORMAT",
)


class BenchError(ProcessError):
    """A phase could not be measured; the message says why."""


def say(line: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", flush=True)


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without the services' settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in OWN_SETTINGS}
    env.update(settings)
    return env


# --------------------------------------------------------------------------- processes


@dataclass
class Servers:
    """Every server this run started, so that all of them are stopped at the end."""

    workdir: Path
    started: list[Server] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], port: int) -> Server:
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(
            name,
            argv,
            env,
            cwd=folder,
            log_path=folder / "server.log",
            base_url=f"http://127.0.0.1:{port}",
        )
        self.started.append(server)
        return server

    def stop(self, server: Server) -> None:
        if server.stop():
            say(f"{server.name} (pid {server.pid}) ignored SIGTERM: killed")
        if server in self.started:
            self.started.remove(server)

    def stop_all(self) -> None:
        for server in reversed(self.started):
            try:
                server.stop()
            except Exception as error:  # keep stopping the others
                say(f"could not stop {server.name} (pid {server.pid}): {error!r}")
        self.started.clear()


async def wait_healthy(server: Server, within: float = STARTUP_SECONDS) -> None:
    await wait_healthy_async(server, within)


def run_command(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")


# --------------------------------------------------------------------------- databases


class Database:
    """Where one customer-service instance keeps its data: a fresh SQLite file in its own
    folder (the default), or a PostgreSQL database dropped and created again each time."""

    def __init__(self, postgres_url: str | None) -> None:
        if postgres_url is not None and not postgres_url.startswith("postgresql+asyncpg://"):
            raise BenchError(
                "BENCH_DATABASE_URL must be a postgresql+asyncpg://user@host:port/db URL"
            )
        self.postgres_url = postgres_url
        self._created = False

    @property
    def kind(self) -> str:
        return "postgresql" if self.postgres_url else "sqlite"

    async def fresh(self, folder: Path) -> str:
        """The URL of an empty database for a new service instance in `folder`."""
        if self.postgres_url is None:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            return f"sqlite+aiosqlite:///{folder / 'customer_service.db'}"
        await self._recreate()
        return self.postgres_url

    async def _admin(self, statements: Sequence[str]) -> None:
        assert self.postgres_url is not None
        admin_url = make_url(self.postgres_url).set(database="postgres")
        engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                for statement in statements:
                    await connection.execute(text(statement))
        finally:
            await engine.dispose()

    def _name(self) -> str:
        assert self.postgres_url is not None
        name = make_url(self.postgres_url).database
        if not name or name == "postgres":
            raise BenchError("BENCH_DATABASE_URL must name a database of its own (not postgres)")
        return name.replace('"', '""')

    async def _recreate(self) -> None:
        name = self._name()
        await self._admin(
            [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"']
        )
        self._created = True

    async def drop(self) -> None:
        if self.postgres_url is not None and self._created:
            await self._admin([f'DROP DATABASE IF EXISTS "{self._name()}" WITH (FORCE)'])
            self._created = False


# --------------------------------------------------------------------------- measuring


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc/<pid>/status."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return values


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, from /proc/<pid>/stat (nan when
    it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return math.nan
    # After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def ratio(value: float, baseline: float) -> float:
    if baseline == 0 or math.isnan(baseline) or math.isnan(value):
        return math.nan
    return value / baseline


def rounded(data: Any, digits: int = 4) -> Any:
    """`data` with its floats rounded and nan/inf turned into null (valid JSON)."""
    if isinstance(data, float):
        return round(data, digits) if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: rounded(v, digits) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [rounded(v, digits) for v in data]
    return data
