"""Local server processes for `make demo` and `make bench`: ports, console scripts, start, stop.

Both run the project's console scripts (`crm-mock serve`, `customer-service serve`) as real
processes on loopback, and both need the same few things: a free port, the script next to
the running Python, a process in a session of its own (so Ctrl-C in the terminal reaches
only the driver, which then stops its servers in order), a wait for `/health`, and a stop
that ends in SIGKILL when a polite signal is ignored. They live here, once.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

STARTUP_SECONDS = 60.0
STOP_SECONDS = 10.0
LOG_TAIL_LINES = 30


class ProcessError(Exception):
    """A server could not be started, or it died; the message says which and why."""


def port_is_free(port: int) -> bool:
    """Whether nothing listens on `port` of 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nobody listens on now (bind port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def console_script(name: str) -> str:
    """The path of the project's console script `name`, installed next to this Python."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ProcessError(f"{path} not found: install the project first (make run does)")
    return str(path)


class ServerProcess:
    """One server process, its output appended to `log_path`.

    `stop_signal` is what asks it to stop (SIGTERM, or SIGINT as Ctrl-C would); SIGKILL
    follows after `STOP_SECONDS`.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        cwd: Path,
        log_path: Path,
        base_url: str,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.started_at = time.monotonic()
        with log_path.open("ab") as log:
            self.process = _spawn(argv, env, cwd, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        """Raise `ProcessError` (with the end of its log) if it has exited."""
        code = self.process.poll()
        if code is not None:
            raise ProcessError(f"the {self.name} exited with code {code}\n{self.log_tail()}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        tail = "\n".join(f"    | {line}" for line in text[-lines:])
        return f"  last lines of {self.log_path}:\n{tail}"

    def stop(self) -> bool:
        """Ask it to stop, then SIGKILL it after `STOP_SECONDS`; True if it had to be killed."""
        if self.process.poll() is not None:
            return False
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout=STOP_SECONDS)
            return False
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_SECONDS)
            return True


def _spawn(
    argv: list[str], env: dict[str, str], cwd: Path, log: IO[Any]
) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C in the terminal reaches only the driver.
    return subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_healthy(server: ServerProcess, within: float = STARTUP_SECONDS) -> None:
    """Poll `GET /health` until it answers 200; `ProcessError` if the server dies or
    `within` seconds pass."""
    deadline = time.monotonic() + within
    with httpx.Client(timeout=1.0) as client:
        while True:
            server.check_alive()
            try:
                if client.get(f"{server.base_url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ProcessError(f"the {server.name} did not answer /health in {within:.0f} s")
            time.sleep(0.05)


async def wait_healthy_async(server: ServerProcess, within: float = STARTUP_SECONDS) -> None:
    """`wait_healthy` for a caller running an event loop."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            server.check_alive()
            try:
                if (await client.get(f"{server.base_url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ProcessError(f"the {server.name} did not answer /health in {within:.0f} s")
            await asyncio.sleep(0.05)
