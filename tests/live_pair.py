"""Both apps as real processes on free loopback ports, for tools that speak only HTTP
(schemathesis, newman, a browser): `with live_pair(folder) as pair: ...`."""

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from support import free_port


@dataclass(frozen=True)
class Pair:
    service_url: str
    crm_url: str


def _wait_healthy(url: str, process: subprocess.Popen[bytes], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        assert process.poll() is None, f"the process serving {url} exited"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer within {within}s"
        time.sleep(0.05)


@contextlib.contextmanager
def live_pair(folder: Path, **service_env: str) -> Iterator[Pair]:
    """A migrated SQLite customer service and a CRM mock, each its own process, stopped
    (and waited for) on the way out. `service_env` adds settings of the customer service."""
    crm_port, service_port = free_port(), free_port()
    crm_url, service_url = f"http://127.0.0.1:{crm_port}", f"http://127.0.0.1:{service_port}"
    base = {**os.environ, "HOST": "127.0.0.1"}
    crm_env = {
        **base,
        "PORT": str(crm_port),
        "CRM_DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'crm.db'}",
    }
    env = {
        **base,
        "PORT": str(service_port),
        "DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'customer_service.db'}",
        "CRM_BASE_URL": crm_url,
        **service_env,
    }
    subprocess.run(
        [sys.executable, "-m", "customer_service", "migrate"],
        env=env,
        check=True,
        capture_output=True,
    )
    log = open(folder / "servers.log", "ab")  # noqa: SIM115 - closed below
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for module, values, url in (
            ("crm_mock", crm_env, crm_url),
            ("customer_service", env, service_url),
        ):
            process = subprocess.Popen(
                [sys.executable, "-m", module, "serve"], env=values, stdout=log, stderr=log
            )
            processes.append(process)
            _wait_healthy(url, process)
        yield Pair(service_url, crm_url)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
