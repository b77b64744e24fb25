"""The `customer-service` command, run as a real process against both backends."""

import asyncio
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from support import CrmControl, LiveServer, eventually

from customer_service.app import create_app
from customer_service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def _run(*args: str, cwd: Path | None = None, **env: str) -> Result:
    """Run the command without blocking the loop (the CRM mock serves from this loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "customer_service",
        *args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def _dead_request(database_url: str, crm: LiveServer, crm_control: CrmControl) -> int:
    """A customer whose CREATE the CRM refused for good; returns the request id."""
    settings = Settings(database_url=database_url, crm_base_url=crm.url)
    app = create_app(settings, run_scheduler=False)
    await crm_control.faults(down=True, statusCode=400)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as http:
            body = {"firstName": "Cli", "lastName": "User", "email": "cli@example.com"}
            assert (await http.post("/api/customers", json=body)).status_code == 201

            async def dead() -> list[dict[str, Any]]:
                page = await http.get("/api/failed-requests", params={"status": "dead"})
                items: list[dict[str, Any]] = page.json()["items"]
                return items

            rows = await eventually(dead)
    await crm_control.faults(down=False)
    request_id: int = rows[0]["id"]
    return request_id


async def test_failed_list_replay_and_retry_deliver_a_dead_request(
    database_url: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    request_id = await _dead_request(database_url, crm, crm_control)
    env = {"DATABASE_URL": database_url, "CRM_BASE_URL": crm.url}

    listed = await _run("failed", "list", "--status", "dead", **env)
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)["items"]] == [request_id]

    retried = await _run("retry", **env)
    assert json.loads(retried.stdout)["attempted"] == 0  # dead stays dead

    assert (await _run("failed", "replay", str(request_id), **env)).returncode == 0
    retried = await _run("retry", **env)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"attempted": 1, "delivered": 1, "failed": 0, "dead": 0}, (
        retried.stderr
    )
    assert len(await crm_control.records(1)) == 1
    assert json.loads((await _run("failed", "list", **env)).stdout)["total"] == 0


async def test_failed_discard_removes_the_request(
    database_url: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    request_id = await _dead_request(database_url, crm, crm_control)
    env = {"DATABASE_URL": database_url}
    assert (await _run("failed", "discard", str(request_id), **env)).returncode == 0
    assert json.loads((await _run("failed", "list", **env)).stdout)["total"] == 0
    missing = await _run("failed", "discard", str(request_id), **env)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


async def test_bad_setting_stops_start_up_with_one_clear_line() -> None:
    result = await _run("serve", PORT="99999")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "customer-service: invalid setting PORT: Input should be less than or equal to 65535"
    ]


async def test_bad_kafka_setting_stops_start_up_with_one_clear_line(tmp_path: Path) -> None:
    result = await _run(
        "serve",
        SYNC_MODE="kafka",
        KAFKA_PARTITIONS="0",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/x.db",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "customer-service: invalid setting KAFKA_PARTITIONS: Input should be greater than or "
        "equal to 1"
    ]


async def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    result = await _run("migrate", DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    listed = await _run("failed", "list", DATABASE_URL=url)
    assert json.loads(listed.stdout) == {"items": [], "total": 0}


def test_demo_walks_through_an_outage_and_ends_equal() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "both sides equal" in result.stdout


async def test_serve_refuses_an_unmigrated_database_in_one_line(tmp_path: Path) -> None:
    result = await _run("serve", DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/empty.db")
    assert result.returncode == 2
    assert re.fullmatch(
        r"customer-service: the database is at revision none, the code needs \d{4}: "
        r"run 'customer-service migrate' first",
        result.stderr.strip().splitlines()[-1],
    )
    assert "Traceback" not in result.stderr


async def test_unsupported_database_url_is_a_bad_setting() -> None:
    result = await _run("migrate", DATABASE_URL="mysql://db/customers")
    assert result.returncode == 2
    assert result.stderr.startswith("customer-service: invalid setting DATABASE_URL:")


async def test_missing_postgres_database_is_one_line_not_a_traceback() -> None:
    result = await _run(
        "serve", DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:5432/no_such_database"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        'customer-service: database error: database "no_such_database" does not exist'
    ]


async def test_dotenv_in_the_working_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=sqlite+aiosqlite:///./from_dotenv.db\n")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "customer_service",
        "migrate",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert (tmp_path / "from_dotenv.db").exists()
    (tmp_path / ".env").write_text("PORT=70000\n")
    result = await _run("serve", cwd=tmp_path)
    assert result.stderr.startswith("customer-service: invalid setting PORT:")


async def test_retry_command_reports_every_delivery_it_made(
    database_url: str, crm: LiveServer, crm_control: CrmControl
) -> None:
    settings = Settings(database_url=database_url, crm_base_url=crm.url)
    app = create_app(settings, run_scheduler=False)
    await crm_control.faults(down=True)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as http:
            for n in range(4):
                body = {"firstName": "R", "lastName": "One", "email": f"r{n}@example.com"}
                assert (await http.post("/api/customers", json=body)).status_code == 201

            async def all_failed() -> bool:
                page = await http.get("/api/failed-requests", params={"status": "failed"})
                return bool(page.json()["total"] == 4)

            await eventually(all_failed)
    await crm_control.faults(down=False)
    # One slot: a background pass started beside it would take customers from its report.
    env = {"DATABASE_URL": database_url, "CRM_BASE_URL": crm.url, "RETRY_CONCURRENCY": "1"}
    retried = await _run("retry", **env)
    assert json.loads(retried.stdout) == {"attempted": 4, "delivered": 4, "failed": 0, "dead": 0}
