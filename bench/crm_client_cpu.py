"""The CRM client's own CPU per call: what chose aiohttp (README, Decisions).

`python bench/crm_client_cpu.py` starts `crm-mock serve` on a free loopback port (fresh
SQLite in a temporary folder) and, in this process, sends `BENCH_CLIENT_CALLS` (3,000)
creates with 16 in flight through each client in turn, twice, interleaved: the service's
`CrmClient` (aiohttp) and httpx's `AsyncClient` with its default transport. It prints this
process's CPU time per call for each: the mock's work is in its own process, so what is
measured is the client's (its event loop included).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from crm_rate import start_crm
from harness import Servers

from customer_service.config import Settings
from customer_service.crm.client import CrmClient

IN_FLIGHT = 16
CUSTOMERS = "/api/crm/customers"


def _body(index: int) -> dict[str, str | None]:
    return {
        "externalId": f"bench-{uuid.uuid4().hex}",
        "firstName": "Ada",
        "lastName": f"Lovelace {index}",
        "email": f"ada{index}@example.com",
        "phone": None,
        "address": "12 St James's Square, London",
    }


async def _cpu_per_call(send: Callable[[int], Awaitable[int]], calls: int) -> float:
    """Seconds of this process's CPU per call, `IN_FLIGHT` calls at a time."""
    numbers = iter(range(calls))
    statuses: list[int] = []

    async def worker() -> None:
        for index in numbers:
            statuses.append(await send(index))

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    spent = time.process_time() - start
    refused = [s for s in statuses if s != 201]
    if refused:
        raise SystemExit(f"{len(refused)} calls were not created: {refused[:5]}")
    return spent / calls


async def measure(base_url: str, calls: int) -> dict[str, list[float]]:
    ours = CrmClient(Settings(crm_base_url=base_url, crm_timeout_seconds=30))
    theirs = httpx.AsyncClient(base_url=base_url, timeout=30)

    async def via_ours(index: int) -> int:
        return (await ours.create(_body(index), uuid.uuid4().hex)).status

    async def via_httpx(index: int) -> int:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        return (await theirs.post(CUSTOMERS, json=_body(index), headers=headers)).status_code

    results: dict[str, list[float]] = {"aiohttp (CrmClient)": [], "httpx default transport": []}
    try:
        await _cpu_per_call(via_ours, 200)  # warm-up: connections, imports, caches
        await _cpu_per_call(via_httpx, 200)
        for _ in range(2):
            results["aiohttp (CrmClient)"].append(await _cpu_per_call(via_ours, calls))
            results["httpx default transport"].append(await _cpu_per_call(via_httpx, calls))
    finally:
        await ours.aclose()
        await theirs.aclose()
    return results


async def main() -> None:
    calls = int(os.environ.get("BENCH_CLIENT_CALLS", "3000"))
    workdir = Path(tempfile.mkdtemp(prefix="crm-client-cpu-"))
    servers = Servers(workdir)
    try:
        crm = await start_crm(servers, "crm")
        results = await measure(crm.base_url, calls)
    finally:
        servers.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    for name, runs in results.items():
        shown = ", ".join(f"{run * 1000:.2f}" for run in runs)
        print(f"{name:26s} client CPU per POST, ms: {shown}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    asyncio.run(main())
