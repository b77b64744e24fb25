"""The CRM comes back after an outage: the backlog drains and the API never stalls.

An outside run found the service hanging for good here: a recovery pass cancelled the
periodic pass in flight, the cancellation landed inside a database transaction, and
the connection it held (on SQLite, with the write lock) was never given back. These
tests run a real `customer-service serve` process, as a user would, on each backend.
"""

import asyncio
import time
from typing import Any

import httpx
from support import (
    CrmControl,
    LiveServer,
    eventually,
    free_port,
    loopback_client,
    service_process,
)

# Every API call made while the backlog drains must answer within this.
ANSWER_WITHIN = 1.0


class TimedClient:
    """Calls the service and fails the test on any call slower than ANSWER_WITHIN."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.slowest = 0.0

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        started = time.monotonic()
        try:
            response = await self.http.request(method, path, timeout=ANSWER_WITHIN, **kwargs)
        except httpx.TimeoutException:
            raise AssertionError(
                f"{method} {path} did not answer within {ANSWER_WITHIN}s"
            ) from None
        self.slowest = max(self.slowest, time.monotonic() - started)
        assert response.status_code < 500, (method, path, response.status_code, response.text)
        return response


async def _create_many(
    timed: TimedClient, prefix: str, count: int, pause: float = 0.0
) -> list[int]:
    """`count` customers, ten at a time, `pause` seconds between tens (a user's pace, so
    the periodic passes of an outage run while the backlog grows)."""
    ids: list[int] = []
    for start in range(0, count, 10):
        if start:
            await asyncio.sleep(pause)
        batch = [
            timed.call(
                "POST",
                "/api/customers",
                json={"firstName": "R", "lastName": f"{n}", "email": f"{prefix}{n}@example.com"},
            )
            for n in range(start, min(start + 10, count))
        ]
        for response in await asyncio.gather(*batch):
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    return ids


async def _all_synced_answering(timed: TimedClient, ids: list[int], within: float) -> None:
    """Read every customer, over and over, each read answering in time, until all are
    synced."""

    async def synced() -> bool:
        behind = {}
        for customer_id in ids:
            body = (await timed.call("GET", f"/api/customers/{customer_id}")).json()
            if body["crm"]["status"] != "synced":
                behind[customer_id] = body["crm"]
        assert not behind, f"not synced: {behind}"
        return True

    await eventually(synced, within=within, interval=0.1)


async def test_api_answers_and_backlog_drains_each_time_the_crm_returns(
    database_url: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    """The outside run's scenario, ten times in one process: one customer, the CRM down
    with 503, 100 more customers, the CRM up. Every time all 101 end synced and every
    call made meanwhile answers within a second."""
    port = free_port()
    env = {"RETRY_INTERVAL_SECONDS": "2", "RECOVERY_PROBE_SECONDS": "1", "CRM_TIMEOUT_SECONDS": "2"}
    async with (
        service_process(database_url, crm.url, port, **env),
        loopback_client(f"http://127.0.0.1:{port}") as http,
    ):
        timed = TimedClient(http)
        for round_ in range(10):
            first = await _create_many(timed, f"r{round_}-first-", 1)
            await _all_synced_answering(timed, first, within=10)
            await crm_control.faults(down=True, statusCode=503)
            backlog = await _create_many(timed, f"r{round_}-", 100, pause=0.3)
            await crm_control.faults(down=False)
            await _all_synced_answering(timed, first + backlog, within=30)
            pending = (await timed.call("GET", "/api/failed-requests")).json()["total"]
            assert pending == 0, f"round {round_}: {pending} requests left"
        crm_page = (await crm_control.http.get("/api/crm/customers?limit=1")).json()
        assert crm_page["total"] == 10 * 101


async def test_periodic_pass_with_slow_crm_calls_in_flight_when_the_crm_returns(
    database_url: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    """At the default interval the start-up pass is the periodic one: it is still
    waiting on CRM calls slower than CRM_TIMEOUT_SECONDS when the CRM recovers and the
    probe starts a recovery pass beside it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A backlog written by an API-only process, so the next one starts with work to do.
    async with (
        service_process(database_url, crm.url, port, SYNC_ENABLED="false"),
        loopback_client(url) as http,
    ):
        ids = await _create_many(TimedClient(http), "slow-", 60)
    await crm_control.faults(latencyMs=3000)
    env = {"CRM_TIMEOUT_SECONDS": "1", "RECOVERY_PROBE_SECONDS": "1", "RETRY_CONCURRENCY": "4"}
    async with (
        service_process(database_url, crm.url, port, **env),
        loopback_client(url) as http,
    ):
        timed = TimedClient(http)

        async def periodic_pass_failing() -> bool:
            page = await timed.call("GET", "/api/failed-requests", params={"status": "failed"})
            return bool(page.json()["total"] > 0)

        # The start-up pass is at the slow CRM: some of its calls have timed out already,
        # most customers are still to come (4 at a time, a second each).
        await eventually(periodic_pass_failing, within=15)
        await crm_control.faults(latencyMs=0)
        await _all_synced_answering(timed, ids, within=30)
        assert (await timed.call("GET", "/api/failed-requests")).json()["total"] == 0
    records = await crm_control.records()
    assert sorted(int(r["externalId"]) for r in records) == sorted(ids)
