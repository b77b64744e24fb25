"""Reconciliation against the real CRM mock, on both databases: drift found, repaired, gone."""

import asyncio
import json
import os
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import insert
from support import (
    CrmControl,
    LiveServer,
    crm_view,
    eventually,
    expected_crm_record,
    live,
)

from crm_mock import store as crm_store
from crm_mock.app import create_app as create_crm_app
from crm_mock.config import CrmSettings
from customer_service.app import create_app
from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.crm.client import CrmClient
from customer_service.customers.models import Customer
from customer_service.db import create_engine, create_sessionmaker
from customer_service.migrate import migrate
from customer_service.reconciliation.reconciler import Reconciler


async def _cli(*args: str, **env: str) -> tuple[int, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "customer_service",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    assert out, err.decode()
    return process.returncode, json.loads(out)


def _drift(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("missing", "extra", "different")}


async def _create(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    body = {"firstName": name, "lastName": "Test", "email": f"{name.lower()}@example.com"}
    response = await http.post("/api/customers", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _both_sides(http: httpx.AsyncClient, crm: CrmControl) -> tuple[list[Any], list[Any]]:
    customers = (await http.get("/api/customers", params={"limit": 500})).json()["items"]
    ours = sorted((expected_crm_record(c) for c in customers), key=lambda r: r["externalId"])
    theirs = sorted((crm_view(r) for r in await crm.records()), key=lambda r: r["externalId"])
    return ours, theirs


async def test_reconcile_lists_exactly_the_drift_and_repair_makes_both_sides_equal(
    make_settings: Callable[..., Settings], crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = make_settings()
    env = {"DATABASE_URL": settings.database_url, "CRM_BASE_URL": crm.url}
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as http:
            assert (await http.get("/api/reconciliation/latest")).status_code == 404
            edited, deleted, discarded, untouched, queued = [
                await _create(http, name) for name in ("Edited", "Deleted", "Discarded", "Ok", "Q")
            ]

            async def all_synced() -> bool:
                items = (await http.get("/api/customers")).json()["items"]
                return all(c["crm"]["status"] == "synced" for c in items)

            await eventually(all_synced)
            crm_ids = {
                c["id"]: (await crm_control.records(c["id"]))[0]["id"] for c in (edited, deleted)
            }

            # Behind our back: an edit, a deletion and an orphan in the CRM.
            changed = {**expected_crm_record(edited), "lastName": "Changed in the CRM"}
            put = await crm_control.http.put(
                f"/api/crm/customers/{crm_ids[edited['id']]}", json=changed
            )
            assert put.status_code == 200
            gone = await crm_control.http.delete(f"/api/crm/customers/{crm_ids[deleted['id']]}")
            assert gone.status_code == 204
            orphan = {
                **expected_crm_record(untouched),
                "externalId": "900",
                "email": "o@example.com",
            }
            assert (
                await crm_control.http.post("/api/crm/customers", json=orphan)
            ).status_code == 201

            # A request refused for good, then discarded by an operator.
            await crm_control.faults(down=True, statusCode=400)
            update = {"firstName": "Discarded", "lastName": "Newer", "email": discarded["email"]}
            assert (await http.put(f"/api/customers/{discarded['id']}", json=update)).is_success

            async def dead() -> list[dict[str, Any]]:
                rows = (await http.get("/api/failed-requests", params={"status": "dead"})).json()
                items: list[dict[str, Any]] = rows["items"]
                return items

            [dead_row] = await eventually(dead)
            assert (await http.delete(f"/api/failed-requests/{dead_row['id']}")).status_code == 204

            # A customer whose request is still on its way is not drift.
            await crm_control.faults(down=True, statusCode=503)
            update = {"firstName": "Q", "lastName": "Later", "email": queued["email"]}
            assert (await http.put(f"/api/customers/{queued['id']}", json=update)).is_success

            async def failed() -> list[dict[str, Any]]:
                rows = (await http.get("/api/failed-requests", params={"status": "failed"})).json()
                items: list[dict[str, Any]] = rows["items"]
                return items

            await eventually(failed)
            # The CRM cannot be read while it is down: 503, no report.
            down = await http.post("/api/reconciliation")
            assert down.status_code == 503
            assert down.headers["content-type"] == "application/problem+json"
            await crm_control.faults(down=False)

            expected = {
                "missing": [deleted["id"]],
                "extra": ["900"],
                "different": sorted([edited["id"], discarded["id"]]),
            }
            report = (await http.post("/api/reconciliation")).json()
            assert _drift(report) == expected
            assert (report["checked"], report["skipped"], report["queued"]) == (5, 1, 0)
            assert report["repaired"] is False
            assert (await http.get("/api/reconciliation/latest")).json() == report
            # Nothing was queued by a run without repair.
            assert [
                r["customerId"] for r in (await http.get("/api/failed-requests")).json()["items"]
            ] == [queued["id"]]

            code, cli_report = await _cli("reconcile", **env)
            assert (code, _drift(cli_report)) == (1, expected)

            code, repaired = await _cli("reconcile", "--repair", **env)
            assert (code, _drift(repaired), repaired["queued"]) == (0, expected, 4)
            assert repaired["repaired"] is True

            # The fixes are ordinary outbox rows: the usual retry pass delivers them.
            retried = (await http.post("/api/failed-requests/retry")).json()
            assert retried["delivered"] == 5, retried
            ours, theirs = await _both_sides(http, crm_control)
            assert ours == theirs
            assert len(theirs) == 5

            again = (await http.post("/api/reconciliation")).json()
            assert _drift(again) == {"missing": [], "extra": [], "different": []}
            assert (again["checked"], again["skipped"]) == (5, 0)
            code, cli_again = await _cli("reconcile", "--repair", **env)
            assert (code, cli_again["queued"]) == (0, 0)


async def _fill(tmp_path: Path, count: int) -> tuple[str, str]:
    """A customer database and a CRM store holding the same `count` customers, written
    directly (thousands of API calls would only slow the test)."""
    folder = tmp_path / str(count)
    folder.mkdir()
    ours = f"sqlite+aiosqlite:///{folder / 'customer_service.db'}"
    theirs = f"sqlite+aiosqlite:///{folder / 'crm.db'}"
    await migrate(ours)
    now = utc_now()
    customers = [
        {
            "id": i,
            "first_name": f"First{i}",
            "last_name": f"Last{i}",
            "email": f"c{i}@example.com",
            "email_key": f"c{i}@example.com",
            "city": "London",
            "version": 1,
            "crm_id": f"crm-{i}",
            "crm_synced_version": 1,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(1, count + 1)
    ]
    records = [
        {
            "id": f"crm-{i}",
            "external_id": str(i),
            "first_name": f"First{i}",
            "last_name": f"Last{i}",
            "email": f"c{i}@example.com",
            "phone": None,
            "address": "London",
            "created_at": now,
            "updated_at": now,
        }
        for i in range(1, count + 1)
    ]
    engine = create_engine(ours)
    async with engine.begin() as connection:
        await connection.execute(insert(Customer), customers)
    await engine.dispose()
    crm_engine = crm_store.create_engine(theirs)
    await crm_store.create_tables(crm_engine)
    async with crm_engine.begin() as connection:
        await connection.execute(insert(crm_store.CrmCustomerRecord), records)
    await crm_engine.dispose()
    return ours, theirs


async def _peak_memory(tmp_path: Path, count: int) -> int:
    """Peak bytes allocated by one reconciliation of `count` customers (after a warm-up run)."""
    ours, theirs = await _fill(tmp_path, count)
    settings = CrmSettings(crm_database_url=theirs)
    async with live(LiveServer(lambda: create_crm_app(settings))) as crm:
        engine = create_engine(ours)
        client = CrmClient(Settings(crm_base_url=crm.url, crm_timeout_seconds=30))
        try:
            reconciler = Reconciler(create_sessionmaker(engine), client, page_size=100)
            assert (await reconciler.run()).checked == count
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                report = await reconciler.run()
                peak = tracemalloc.get_traced_memory()[1] - before
            finally:
                tracemalloc.stop()
        finally:
            await client.aclose()
        await engine.dispose()
    assert report.checked == count
    assert report.drift == 0
    return peak


async def test_reconciliation_memory_does_not_grow_with_the_number_of_customers(
    tmp_path: Path,
) -> None:
    small = await _peak_memory(tmp_path, 1000)
    large = await _peak_memory(tmp_path, 4000)
    # Four times the customers; the peak stays that of one page (give or take noise).
    assert large < small * 1.3, (small, large)


async def test_reconcile_interval_repairs_drift_in_the_background(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    app = create_app(make_settings(reconcile_interval_seconds=0.2), run_scheduler=True)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as http:
            customer = await _create(http, "Periodic")

            async def record() -> list[dict[str, Any]]:
                return await crm_control.records(customer["id"])

            [first] = await eventually(record)
            gone = await crm_control.http.delete(f"/api/crm/customers/{first['id']}")
            assert gone.status_code == 204

            async def recreated() -> bool:
                records = await record()
                return bool(records) and records[0]["id"] != first["id"]

            await eventually(recreated)
            latest = (await http.get("/api/reconciliation/latest")).json()
            assert latest["repaired"] is True


async def test_reconcile_exits_1_with_one_line_when_the_crm_cannot_be_read(
    database_url: str, unused_port: int
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "customer_service",
        "reconcile",
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "CRM_BASE_URL": f"http://127.0.0.1:{unused_port}",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert out == b""
    [line] = err.decode().strip().splitlines()
    assert line.startswith("customer-service: the CRM cannot be read: ClientConnectorError")
    assert f"Cannot connect to host 127.0.0.1:{unused_port}" in line
