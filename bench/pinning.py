"""The service on a core of its own, everything else on the others (phase 1, for the record).

On a machine of a few cores the CRM mock, PostgreSQL and the load generator run beside the
service, so with sync on the service loses CPU to the mock's work (a real CRM's work
happens on the vendor's machines) and every process slows down as the cores fill up: on
2 cores, a busy loop beside the service took sync-off from 708-848 to 520 writes/s and
raised its CPU per write from 1.17-1.40 to 1.59 ms (bench/README, 2026-12-07).
`service_alone` gives the service the first CPU and moves the CRM mock, this process (the
load) and PostgreSQL's processes to the others for the duration of a measurement, then
puts every affinity back: what is left is what delivering costs the service itself.
PostgreSQL's processes belong to the server, not to the benchmark: when they cannot be
moved (another user's server), they stay where they are and the result says so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def can_pin() -> bool:
    """Whether this platform and machine allow a core for the service alone."""
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def postgres_pids() -> list[int]:
    """PostgreSQL's server processes on this machine (Linux: by `/proc/<pid>/comm`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == "postgres":
                found.append(int(entry.name))
    return found


@dataclass
class Pinned:
    """What `service_alone` moved, so it can be put back."""

    saved: dict[int, set[int]] = field(default_factory=dict)
    postgres_moved: int = 0
    postgres_refused: int = 0

    def move(self, pid: int, cpus: set[int]) -> bool:
        try:
            before = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, cpus)
        except (PermissionError, ProcessLookupError):
            return False
        self.saved.setdefault(pid, before)
        return True

    def restore(self, everywhere: set[int]) -> None:
        for pid, cpus in self.saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpus)
        # Backends the postmaster started meanwhile inherited the narrower set.
        for pid in postgres_pids():
            if pid not in self.saved:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(pid, everywhere)
        self.saved.clear()


@contextlib.contextmanager
def service_alone(service_pid: int, others: list[int]) -> Iterator[Pinned]:
    """The service on the first CPU; `others`, this process and PostgreSQL on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    own, rest = {cpus[0]}, set(cpus[1:])
    pinned = Pinned()
    try:
        if not pinned.move(service_pid, own):
            raise RuntimeError(f"could not give process {service_pid} a core of its own")
        for pid in [*others, os.getpid()]:
            pinned.move(pid, rest)
        # The postmaster first: the backends it starts meanwhile inherit its affinity.
        for pid in sorted(postgres_pids()):
            if pinned.move(pid, rest):
                pinned.postgres_moved += 1
            else:
                pinned.postgres_refused += 1
        yield pinned
    finally:
        pinned.restore(set(cpus))
