"""HTTP sync end to end: the service against the real CRM mock on loopback.

Every test runs on SQLite and on PostgreSQL (the `database_url` fixture).
"""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from support import CrmControl, LiveServer, eventually, expected_crm_record
from support import assert_equal_sides as _assert_equal_sides
from support import create_customer as _create
from support import deliveries_idle as _idle
from support import operator_retry as _retry
from support import read_customer as _customer
from support import update_customer as _update

from customer_service.app import create_app
from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.sync.models import SyncClaim
from customer_service.sync.retry import Urgency


async def _outbox(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    page = (await client.get("/api/failed-requests", params={"limit": 500, **params})).json()
    items: list[dict[str, Any]] = page["items"]
    return items


async def _synced(client: httpx.AsyncClient, customer_id: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        customer = await _customer(client, customer_id)
        return customer if customer["crm"]["status"] == "synced" else None

    return await eventually(check)


async def test_healthy_crm_gets_create_update_delete(
    client: httpx.AsyncClient, crm_control: CrmControl
) -> None:
    customer = await _create(client)
    await _synced(client, customer["id"])
    await _update(client, customer, firstName="Augusta")
    await eventually(lambda: _check_first_name(crm_control, customer["id"], "Augusta"))
    await _synced(client, customer["id"])
    await _assert_equal_sides(client, crm_control, customer["id"])
    assert (await client.delete(f"/api/customers/{customer['id']}")).status_code == 204
    await eventually(lambda: _no_records(crm_control, customer["id"]))
    assert await _outbox(client) == []


async def _check_first_name(crm: CrmControl, customer_id: int, name: str) -> bool:
    records = await crm.records(customer_id)
    return bool(records) and records[0]["firstName"] == name


async def _no_outbox(client: httpx.AsyncClient) -> bool:
    return await _outbox(client) == []


async def _no_records(crm: CrmControl, customer_id: int) -> bool:
    return await crm.records(customer_id) == []


async def test_write_answers_without_waiting_for_a_slow_crm(
    client: httpx.AsyncClient, crm_control: CrmControl
) -> None:
    # A second of CRM latency, a second short of the tests' CRM_TIMEOUT_SECONDS (2): at 1.5 s
    # the slow hour of 2026-12-07 took the mock past the timeout, and the call never landed.
    await crm_control.faults(latencyMs=1000)
    customer = await _create(client)
    # Had the write waited for the CRM, its request would be delivered and gone by now.
    assert customer["crm"]["status"] == "pending"
    assert [r["operation"] for r in await _outbox(client)] == ["CREATE"]
    await _synced(client, customer["id"])
    await _assert_equal_sides(client, crm_control, customer["id"])


async def test_crm_down_by_fault_switch_keeps_requests_and_retry_delivers(
    client: httpx.AsyncClient, crm_control: CrmControl
) -> None:
    await crm_control.faults(down=True, statusCode=503)
    customer = await _create(client)
    await _update(client, customer, lastName="King")

    async def failed() -> list[dict[str, Any]] | None:
        rows = await _outbox(client)
        return rows if rows and rows[0]["status"] == "failed" else None

    rows = await eventually(failed)
    assert [r["operation"] for r in rows] == ["CREATE", "UPDATE"]
    assert "503" in rows[0]["lastError"]
    assert (await _customer(client, customer["id"]))["crm"]["status"] == "failed"
    assert all(r["status"] == 503 for r in await crm_control.requests(customer["id"]))

    await crm_control.faults(down=False)
    report = await _retry(client)
    assert report == {"attempted": 2, "delivered": 2, "failed": 0, "dead": 0}
    assert await _outbox(client) == []
    await _assert_equal_sides(client, crm_control, customer["id"])


async def test_crm_process_stopped_refuses_connections_and_retry_delivers(
    client: httpx.AsyncClient, crm: LiveServer, crm_control: CrmControl
) -> None:
    await crm.stop()
    customer = await _create(client)

    async def failed() -> list[dict[str, Any]] | None:
        rows = await _outbox(client, status="failed")
        return rows or None

    rows = await eventually(failed)
    assert "unreachable" in rows[0]["lastError"]
    report = await _retry(client)
    assert report["delivered"] == 0 and report["failed"] == 1

    await crm.start()
    assert (await _retry(client))["delivered"] == 1
    await _assert_equal_sides(client, crm_control, customer["id"])


async def test_ten_updates_during_outage_end_with_the_last_delivered_in_order(
    client: httpx.AsyncClient, crm_control: CrmControl
) -> None:
    await crm_control.faults(down=True)
    customer = await _create(client)
    for n in range(1, 11):
        await _update(client, customer, firstName=f"v{n}")
    assert len(await _outbox(client)) == 11
    back_at = datetime.now(UTC).isoformat()
    await crm_control.faults(down=False)
    await _retry(client)
    await _assert_equal_sides(client, crm_control, customer["id"])
    assert (await crm_control.records(customer["id"]))[0]["firstName"] == "v10"

    delivered = [
        r
        for r in await crm_control.requests(customer["id"])
        if r["receivedAt"] >= back_at and r["status"] < 300 and r["method"] != "GET"
    ]
    # The CREATE, then the ten pending updates coalesced into the newest state.
    assert [r["method"] for r in delivered] == ["POST", "PUT"]
    assert delivered[1]["body"]["firstName"] == "v10"


async def test_create_whose_answer_is_lost_leaves_exactly_one_crm_record(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    app = create_app(make_settings(crm_timeout_seconds=0.5), run_scheduler=False)
    async with LifespanManager(app), _client(app) as client:
        await crm_control.faults(latencyMs=1500)
        customer = await _create(client)
        rows = await eventually(lambda: _outbox(client, status="failed"))
        assert "Timeout" in rows[0]["lastError"]
        # The CRM did create the record; only its answer was lost.
        await eventually(lambda: crm_control.records(customer["id"]))
        await crm_control.faults(latencyMs=0)
        assert (await _retry(client))["delivered"] == 1
        await _assert_equal_sides(client, crm_control, customer["id"])
        posts = [r for r in await crm_control.requests(customer["id"]) if r["method"] == "POST"]
        assert len(posts) == 2 and posts[0]["idempotencyKey"] == posts[1]["idempotencyKey"]


async def test_create_answered_409_adopts_the_existing_crm_record(
    client: httpx.AsyncClient, crm_control: CrmControl
) -> None:
    await crm_control.faults(down=True)
    customer = await _create(client, email="grace@example.com")
    await eventually(lambda: _outbox(client, status="failed"))  # the kicked delivery failed
    # Someone else created the record with our externalId (and stale data) meanwhile.
    await crm_control.faults(down=False)
    stale = {**expected_crm_record({**customer, "firstName": "Old"})}
    made = await crm_control.http.post("/api/crm/customers", json=stale)
    assert made.status_code == 201
    await _retry(client)
    await _assert_equal_sides(client, crm_control, customer["id"])
    assert (await _customer(client, customer["id"]))["crm"]["id"] == made.json()["id"]


async def test_permanent_error_makes_request_dead_and_replay_delivers(
    client: httpx.AsyncClient, crm_control: CrmControl
) -> None:
    await crm_control.faults(down=True, statusCode=422)
    customer = await _create(client)
    rows = await eventually(lambda: _outbox(client, status="dead"))
    assert rows[0]["attempts"] == 1
    assert (await _customer(client, customer["id"]))["crm"]["status"] == "dead"

    await crm_control.faults(down=False)
    assert (await _retry(client))["attempted"] == 0  # dead stays dead
    assert (await _outbox(client, status="dead"))[0]["id"] == rows[0]["id"]

    replayed = await client.post(f"/api/failed-requests/{rows[0]['id']}/replay")
    assert replayed.status_code == 200 and replayed.json()["status"] == "pending"
    await _synced(client, customer["id"])
    await _assert_equal_sides(client, crm_control, customer["id"])
    # The replay carried a new Idempotency-Key: a CRM that stored its refusal under the
    # old key would otherwise answer it again forever.
    posts = [r for r in await crm_control.requests(customer["id"]) if r["method"] == "POST"]
    assert [p["status"] for p in posts] == [422, 201]
    assert posts[0]["idempotencyKey"] != posts[1]["idempotencyKey"]


async def test_dead_request_holds_back_newer_ones_until_discarded(
    client: httpx.AsyncClient, crm_control: CrmControl
) -> None:
    await crm_control.faults(down=True, statusCode=400)
    customer = await _create(client)
    dead = (await eventually(lambda: _outbox(client, status="dead")))[0]
    await crm_control.faults(down=False)
    await _update(client, customer, firstName="Later")
    await _retry(client)
    assert await crm_control.records(customer["id"]) == []
    # The worst state shows: dead, though the newer request is merely pending.
    assert (await _customer(client, customer["id"]))["crm"]["status"] == "dead"
    assert (await client.delete(f"/api/failed-requests/{dead['id']}")).status_code == 204
    # The UPDATE, now at the head, creates the record with the latest state.
    await _synced(client, customer["id"])
    await _assert_equal_sides(client, crm_control, customer["id"])


async def test_max_attempts_makes_request_dead(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    app = create_app(make_settings(retry_max_attempts=2), run_scheduler=False)
    async with LifespanManager(app), _client(app) as client:
        await crm_control.faults(down=True)
        await _create(client)
        await eventually(lambda: _outbox(client, status="failed"))
        assert (await _retry(client))["dead"] == 1
        rows = await _outbox(client)
        assert rows[0]["status"] == "dead" and rows[0]["attempts"] == 2


async def test_retry_after_is_honoured(client: httpx.AsyncClient, crm_control: CrmControl) -> None:
    await crm_control.faults(down=True, statusCode=503, retryAfterSeconds=600)
    before = utc_now()
    await _create(client)
    row = (await eventually(lambda: _outbox(client, status="failed")))[0]
    due = datetime.fromisoformat(row["nextAttemptAt"])
    assert due >= before + timedelta(seconds=599)


async def test_retry_groups_run_in_parallel_across_customers_and_serially_within_one(
    client: httpx.AsyncClient, crm_control: CrmControl
) -> None:
    await crm_control.faults(down=True)
    customers = [await _create(client, email=f"c{n}@example.com") for n in range(2)]
    for customer in customers:
        await _update(client, customer, firstName="Changed")
        assert (await client.delete(f"/api/customers/{customer['id']}")).status_code == 204
    # The deliveries those writes kicked have met the CRM down (in-process, the client and
    # the service share a loop: they may not have run yet).
    await eventually(lambda: _idle(client))
    latency = 0.4
    back_at = datetime.now(UTC).isoformat()
    await crm_control.faults(down=False, latencyMs=int(latency * 1000))
    assert (await _retry(client))["delivered"] == 6

    arrivals: dict[int, list[datetime]] = {}
    for customer in customers:
        log = [
            r
            for r in await crm_control.requests(customer["id"])
            if r["receivedAt"] >= back_at and r["method"] != "GET" and r["status"] < 300
        ]
        assert [r["method"] for r in log] == ["POST", "PUT", "DELETE"], [
            (r["method"], r["status"], r["idempotencyKey"], r["receivedAt"], r["path"]) for r in log
        ]
        arrivals[customer["id"]] = [datetime.fromisoformat(r["receivedAt"]) for r in log]
    for times in arrivals.values():
        gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
        assert min(gaps) >= latency * 0.95, gaps  # one at a time within a customer
    first, second = arrivals.values()
    assert abs((first[0] - second[0]).total_seconds()) < latency  # groups overlap


async def _not_suspect(app: FastAPI) -> bool:
    return not app.state.delivery.health.suspect


async def test_backlog_drains_within_seconds_of_crm_return(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    settings = make_settings(recovery_probe_seconds=0.2)
    app = create_app(settings, run_scheduler=True)
    async with LifespanManager(app), _client(app) as client:
        # The first probe has found the CRM up (else the write's kick is held, never tried).
        await eventually(lambda: _not_suspect(app))
        await crm_control.faults(down=True)
        customer = await _create(client)
        await eventually(lambda: _outbox(client, status="failed"))
        await crm_control.faults(down=False)
        # The retry interval is an hour: only the recovery probe can deliver this.
        await _synced(client, customer["id"])
        await _assert_equal_sides(client, crm_control, customer["id"])


async def test_scheduler_retries_every_interval(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    settings = make_settings(
        retry_interval_seconds=0.3, retry_backoff_base_seconds=0.1, retry_backoff_max_seconds=0.2
    )
    app = create_app(settings, run_scheduler=True)
    async with LifespanManager(app), _client(app) as client:
        await crm_control.faults(down=True)
        customer = await _create(client)
        rows = await eventually(lambda: _outbox(client, status="failed"))
        await eventually(lambda: _attempts_at_least(client, 3))
        assert rows[0]["operation"] == "CREATE"
        await crm_control.faults(down=False)
        await _synced(client, customer["id"])


async def _attempts_at_least(client: httpx.AsyncClient, n: int) -> bool:
    rows = await _outbox(client)
    return bool(rows) and rows[0]["attempts"] >= n


async def test_two_replicas_never_deliver_one_customer_at_once(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    first = create_app(make_settings(), run_scheduler=False)
    second = create_app(make_settings(), run_scheduler=False)
    async with (
        LifespanManager(first),
        LifespanManager(second),
        _client(first) as a,
        _client(second) as b,
    ):
        await crm_control.faults(down=True)
        customers = [await _create(a, email=f"r{n}@example.com") for n in range(4)]
        for customer in customers:
            await _update(b, customer, firstName="Changed")
            assert (await b.delete(f"/api/customers/{customer['id']}")).status_code == 204
        # The writes' own deliveries (met the CRM down, or found the customer held by the
        # other replica's and looked again) must be done: one still holding a customer
        # when the passes start makes every pass skip it as busy.
        await eventually(lambda: _idle(a))
        await eventually(lambda: _idle(b))
        back_at = datetime.now(UTC).isoformat()
        await crm_control.faults(down=False, latencyMs=200)
        reports = await asyncio.gather(_retry(a), _retry(b), _retry(a), _retry(b))
        assert sum(r["delivered"] for r in reports) == 12
        assert await _outbox(a) == []
    for customer in customers:
        log = [
            r
            for r in await crm_control.requests(customer["id"])
            if r["receivedAt"] >= back_at and r["method"] != "GET" and r["status"] < 300
        ]
        assert [r["method"] for r in log] == ["POST", "PUT", "DELETE"], log
        times = [datetime.fromisoformat(r["receivedAt"]) for r in log]
        gaps = [(y - x).total_seconds() for x, y in pairwise(times)]
        assert min(gaps) >= 0.19, gaps


async def test_claim_of_a_crashed_replica_expires_and_is_taken_over(
    client: httpx.AsyncClient, service_app: FastAPI, crm_control: CrmControl
) -> None:
    await crm_control.faults(down=True)
    customer = await _create(client)
    await eventually(lambda: _outbox(client, status="failed"))
    await crm_control.faults(down=False)
    sessionmaker = service_app.state.sessionmaker
    async with sessionmaker() as session, session.begin():
        session.add(
            SyncClaim(
                customer_id=customer["id"],
                owner="live-replica",
                expires_at=utc_now() + timedelta(minutes=5),
            )
        )
    assert (await _retry(client))["attempted"] == 0  # another replica holds it
    async with sessionmaker() as session, session.begin():
        claim = await session.get(SyncClaim, customer["id"])
        assert claim is not None
        claim.owner = "crashed-replica"
        claim.expires_at = utc_now() - timedelta(seconds=1)
    assert (await _retry(client))["delivered"] == 1
    await _assert_equal_sides(client, crm_control, customer["id"])


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


async def test_two_drains_of_one_customer_in_one_process_never_overlap(
    client: httpx.AsyncClient, service_app: FastAPI, crm_control: CrmControl
) -> None:
    await crm_control.faults(down=True)
    customer = await _create(client)
    await _update(client, customer, firstName="Changed")
    await eventually(lambda: _idle(client))
    await crm_control.faults(down=False, latencyMs=300)
    engine = service_app.state.delivery

    async def drain() -> Any:
        counts, _ = await engine.run_pass(
            [customer["id"]], Urgency.OPERATOR, asyncio.Semaphore(4), 4, lambda: False
        )
        return counts

    first, second = await asyncio.gather(drain(), drain())
    assert first.delivered + second.delivered == 2
    assert first.busy + second.busy == 1
    writes = [r for r in await crm_control.requests(customer["id"]) if r["status"] < 300]
    assert [r["method"] for r in writes if r["method"] != "GET"] == ["POST", "PUT"]


async def test_flaky_crm_ends_equal_with_every_customer_in_order(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    settings = make_settings(
        retry_interval_seconds=0.2,
        retry_backoff_base_seconds=0.05,
        retry_backoff_max_seconds=0.2,
        recovery_probe_seconds=0.2,
        retry_max_attempts=1000,
    )
    app = create_app(settings, run_scheduler=True)
    async with LifespanManager(app), _client(app) as client:
        await crm_control.faults(errorRate=0.4, statusCode=503)
        customers = [await _create(client, email=f"f{n}@example.com") for n in range(4)]

        async def churn(customer: dict[str, Any]) -> None:
            for n in range(1, 8):
                await _update(client, customer, lastName=f"v{n}")

        await asyncio.gather(*(churn(c) for c in customers))
        await crm_control.faults(errorRate=0.0)
        for customer in customers:
            await _synced(client, customer["id"])
            await _assert_equal_sides(client, crm_control, customer["id"])
            assert (await _customer(client, customer["id"]))["lastName"] == "v7"
            landed = [
                r
                for r in await crm_control.requests(customer["id"])
                if r["method"] in {"POST", "PUT"} and r["status"] < 300
            ]
            names = [r["body"]["lastName"] for r in landed]
            versions = [int(name[1:]) if name.startswith("v") else 0 for name in names]
            assert versions == sorted(versions), versions  # never an older state after a newer


async def test_sync_disabled_process_records_but_never_delivers(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    api_only = create_app(make_settings(sync_enabled=False), run_scheduler=True)
    async with LifespanManager(api_only), _client(api_only) as client:
        customer = await _create(client)
        assert (await _idle(client)) and [r["status"] for r in await _outbox(client)] == ["pending"]
    assert await crm_control.records(customer["id"]) == []
    syncing = create_app(make_settings(), run_scheduler=True)
    async with LifespanManager(syncing), _client(syncing) as client:
        await _synced(client, customer["id"])  # the start-up pass takes it
        await _assert_equal_sides(client, crm_control, customer["id"])


async def test_retry_concurrency_bounds_the_process_not_each_pass(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    app = create_app(make_settings(retry_concurrency=2), run_scheduler=False)
    async with LifespanManager(app), _client(app) as client:
        await crm_control.faults(down=True)
        for n in range(6):
            await _create(client, email=f"b{n}@example.com")
        await eventually(lambda: _idle(client))
        back_at = datetime.now(UTC).isoformat()
        await crm_control.faults(down=False, latencyMs=300)
        # Two operator passes, and the recovery pass the first success starts: one bound.
        await asyncio.gather(_retry(client), _retry(client))
        await eventually(lambda: _no_outbox(client))
    arrivals = sorted(
        datetime.fromisoformat(r["receivedAt"])
        for r in await crm_control.requests()
        if r["method"] == "POST" and r["receivedAt"] >= back_at
    )
    assert len(arrivals) == 6
    # With 2 slots, a third call can only start once one of the first two (300 ms) ended.
    for first, third in zip(arrivals, arrivals[2:], strict=False):
        assert (third - first).total_seconds() >= 0.28, arrivals
