"""The write loads: `POST /api/customers` closed loop (N writers) or open loop (a steady rate).

Both speak raw HTTP/1.1 (`rawhttp`), so the load costs the machine little of the CPU it
measures; both work against the customer service and the seed's design alike, whose
answers carry the new customer's `id` and `createdAt`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from harness import BenchError, Server, parse_time, percentile
from rawhttp import ConnectionPool, RawConnection, RawHttpError, connection

CUSTOMERS = "/api/customers"


def customer_body(tag: str, number: int) -> dict[str, Any]:
    return {
        "firstName": f"Bench{number}",
        "lastName": "Writer",
        "email": f"{tag}-{number}@example.com",
        "phone": "+44 20 7946 0000",
        "address": {
            "street": f"{number} Bench Street",
            "city": "London",
            "state": None,
            "postalCode": "SW1Y 4JH",
            "country": "GB",
        },
    }


@dataclass
class WriteRun:
    """The answers of a burst of `POST /api/customers`."""

    latencies: list[float] = field(default_factory=list)
    created: dict[int, datetime] = field(default_factory=dict)
    # When the 201 reached the benchmark (same host clock as the CRM's receivedAt).
    answered: dict[int, datetime] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return self.ok / self.elapsed if self.elapsed else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "writes": self.ok,
            "seconds": self.elapsed,
            "perSecond": self.per_second,
            "errors": dict(self.errors),
            "latencyMs": {
                "p50": percentile(self.latencies, 50) * 1000,
                "p90": percentile(self.latencies, 90) * 1000,
                "p99": percentile(self.latencies, 99) * 1000,
                "max": max(self.latencies, default=math.nan) * 1000,
                "mean": sum(self.latencies) / len(self.latencies) * 1000
                if self.latencies
                else math.nan,
            },
        }

    async def write(
        self, conn: RawConnection | ConnectionPool, service: Server, tag: str, number: int
    ) -> None:
        """One write, its answer added to the run."""
        sent = time.perf_counter()
        try:
            answer = await conn.request("POST", CUSTOMERS, customer_body(tag, number))
        except RawHttpError as error:
            self.errors[type(error).__name__] += 1
            service.check_alive()
            return
        took = time.perf_counter() - sent
        if answer.status == 201:
            body = answer.json()
            self.latencies.append(took)
            self.created[int(body["id"])] = parse_time(body["createdAt"])
            self.answered[int(body["id"])] = datetime.now(UTC)
        else:
            self.errors[str(answer.status)] += 1


async def write_load(
    service: Server,
    tag: str,
    writers: int,
    *,
    count: int | None = None,
    seconds: float | None = None,
) -> WriteRun:
    """`writers` concurrent clients POSTing customers, for `count` writes or `seconds`."""
    run = WriteRun()
    numbers = itertools.count()
    started = time.perf_counter()
    stop_at = started + seconds if seconds is not None else math.inf

    async def writer() -> None:
        async with connection(service.base_url) as conn:
            while time.perf_counter() < stop_at:
                number = next(numbers)
                if count is not None and number >= count:
                    return
                await run.write(conn, service, tag, number)

    await asyncio.gather(*(writer() for _ in range(writers)))
    run.elapsed = time.perf_counter() - started
    if run.ok == 0:
        raise BenchError(f"no write succeeded ({dict(run.errors)})\n{service.log_tail()}")
    return run


async def paced_load(service: Server, tag: str, rate: float, count: int) -> WriteRun:
    """Open loop: write `count` customers at `rate` per second, each sent on schedule
    whether or not earlier ones have answered (so the load does not bend to the service)."""
    run = WriteRun()
    pool = ConnectionPool(service.base_url)
    started = time.perf_counter()
    tasks = []
    try:
        for number in range(count):
            delay = started + number / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(run.write(pool, service, tag, number)))
        await asyncio.gather(*tasks)
    finally:
        await pool.close()
    run.elapsed = time.perf_counter() - started
    if run.ok == 0:
        raise BenchError(f"no write succeeded ({dict(run.errors)})\n{service.log_tail()}")
    return run
