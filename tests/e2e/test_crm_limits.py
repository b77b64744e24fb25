"""Guarantee 7 against the real CRM mock: the circuit breaker and the CRM's rate limits.

The service runs in process with its scheduler (so the recovery probe runs, as in
production); the CRM mock's request log is the witness of every call it received.
"""

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from support import CrmControl, eventually

from customer_service.app import create_app
from customer_service.config import Settings

PROBE_SECONDS = 0.5


@asynccontextmanager
async def _service(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)  # with the scheduler: the probe runs
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            yield app, client


def _at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["receivedAt"].replace("Z", "+00:00"))


async def _create(client: httpx.AsyncClient, n: int) -> int:
    body = {"firstName": "L", "lastName": f"{n}", "email": f"limit{n}@example.com"}
    response = await client.post("/api/customers", json=body)
    assert response.status_code == 201, response.text
    customer_id: int = response.json()["id"]
    return customer_id


async def _all_synced(client: httpx.AsyncClient, ids: list[int]) -> bool:
    for customer_id in ids:
        body = (await client.get(f"/api/customers/{customer_id}")).json()
        if body["crm"]["status"] != "synced":
            return False
    return True


async def test_breaker_keeps_writes_from_calling_a_crm_that_is_down(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    settings = make_settings(recovery_probe_seconds=PROBE_SECONDS, retry_backoff_base_seconds=1)
    async with _service(settings) as (app, client):
        health = app.state.delivery.health
        first = await _create(client, 0)
        await eventually(lambda: _all_synced(client, [first]))
        assert not health.breaker_open
        await crm_control.faults(down=True, statusCode=503)
        ids = [await _create(client, 1)]
        await eventually(lambda: _open(health))  # that write's delivery failed
        before = len(await crm_control.requests())
        started = datetime.now().astimezone()
        for n in range(2, 102):
            ids.append(await _create(client, n))
        finished = datetime.now().astimezone()
        calls = (await crm_control.requests())[before:]
        during = [c for c in calls if started <= _at(c) <= finished]
        elapsed = (finished - started).total_seconds()
        # One probe per interval (and the write that opened it), never one per write.
        assert len(during) <= elapsed / PROBE_SECONDS + 2, (len(during), elapsed)
        assert all(c["method"] == "GET" for c in during), during  # probes only
        await crm_control.faults(down=False)
        await eventually(lambda: _all_synced(client, ids), within=20)
    records = await crm_control.records()
    assert len(records) == 102


async def _open(health: Any) -> bool:
    return bool(health.breaker_open)


async def test_calls_never_exceed_crm_max_requests_per_second(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    limit = 20
    settings = make_settings(
        crm_max_requests_per_second=limit, recovery_probe_seconds=PROBE_SECONDS
    )
    async with _service(settings) as (_, client):
        ids = [await _create(client, n) for n in range(70)]
        await eventually(lambda: _all_synced(client, ids), within=30)
    per_second = Counter(
        _at(entry).replace(microsecond=0) for entry in await crm_control.requests()
    )
    assert max(per_second.values()) <= limit, per_second
    assert sum(per_second.values()) >= 70


async def test_a_429_pauses_the_process_and_nothing_is_dead(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    settings = make_settings(recovery_probe_seconds=PROBE_SECONDS, retry_backoff_base_seconds=1)
    await crm_control.faults(rateLimitPerSecond=5, retryAfterSeconds=1)
    async with _service(settings) as (_, client):
        ids = [await _create(client, n) for n in range(30)]
        await eventually(lambda: _all_synced(client, ids), within=40)
        dead = (await client.get("/api/failed-requests", params={"status": "dead"})).json()
        assert dead["total"] == 0
    await crm_control.faults(rateLimitPerSecond=None)  # so the test's own reads go through
    entries = await crm_control.requests()
    assert any(e["status"] == 429 for e in entries)  # the limit was hit, and survived
    assert len(await crm_control.records()) == 30


async def test_with_no_limit_set_the_crms_429s_teach_the_pace(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    """No CRM_MAX_REQUESTS_PER_SECOND, a CRM allowing 10 calls a second, 200 writes: the
    service learns the pace from the 429s, so refused calls stay within a tenth of the
    delivered ones (pausing on each 429 alone refused more calls than it delivered)."""
    settings = make_settings(recovery_probe_seconds=PROBE_SECONDS, retry_backoff_base_seconds=1)
    await crm_control.faults(rateLimitPerSecond=10)
    async with _service(settings) as (_, client):
        ids = [await _create(client, n) for n in range(200)]
        await eventually(lambda: _all_synced(client, ids), within=90)
    await crm_control.faults(rateLimitPerSecond=None)
    entries = await crm_control.requests()
    refused = sum(1 for e in entries if e["status"] == 429)
    delivered = sum(1 for e in entries if e["method"] == "POST" and e["status"] == 201)
    assert delivered == 200
    assert 0 < refused <= delivered / 10, (refused, delivered)
