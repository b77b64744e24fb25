"""`customer-service retry` under `SYNC_MODE=kafka`, run as a real process: it publishes
the outbox to `KAFKA_TOPIC`, as the service would, and never calls the CRM's REST API.

The rows are left in the outbox by an API-only service (`SYNC_ENABLED=false`, which
records every write's request and delivers none); the CRM mock runs all along, so a
command that went to its REST API instead would show in its request log.
"""

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from asgi_lifespan import LifespanManager
from kafka_support import Broker, Topics, read_topic
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import CrmControl, LiveServer, create_customer, free_port

from customer_service.app import create_app
from customer_service.config import Settings

CUSTOMERS = 3


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


async def _retry(**env: str) -> Result:
    """`customer-service retry`, without blocking the loop (the CRM mock serves from it)."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "customer_service",
        "retry",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode(), time.monotonic() - started)


async def _leave_in_outbox(database_url: str, crm: LiveServer) -> None:
    """Create customers through an API-only service: their CREATE requests stay pending."""
    settings = Settings(database_url=database_url, crm_base_url=crm.url, sync_enabled=False)
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as http:
            for n in range(CUSTOMERS):
                await create_customer(http, f"kafka-retry-{n}@example.com")


async def _outbox(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT customer_id, idempotency_key, status, last_error FROM failed_requests"
                " ORDER BY customer_id"
            )
        )
        return [dict(row._mapping) for row in result]


def _env(database_url: str, crm: LiveServer, topics: Topics, bootstrap: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        # The CRM mock is up and reachable: a REST call would land in its request log.
        "CRM_BASE_URL": crm.url,
        "SYNC_MODE": "kafka",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topics.events,
        "KAFKA_STATUS_TOPIC": topics.status,
        "KAFKA_IDEMPOTENT_PRODUCER": "false",
        "CRM_TIMEOUT_SECONDS": "1",
    }


async def _topic_names(broker: Broker) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_retry_in_kafka_mode_publishes_the_outbox_and_calls_no_crm_api(
    database_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    sql_engine: AsyncEngine,
) -> None:
    topics = Topics.fresh()
    await _leave_in_outbox(database_url, crm)
    pending = await _outbox(sql_engine)
    assert [r["status"] for r in pending] == ["pending"] * CUSTOMERS
    assert await crm_control.requests() == []

    retried = await _retry(**_env(database_url, crm, topics, kafka_broker.bootstrap))

    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {
        "attempted": CUSTOMERS,
        "delivered": CUSTOMERS,
        "failed": 0,
        "dead": 0,
    }, retried.stderr
    assert await crm_control.requests() == []  # not one call to the CRM's REST API
    assert await _outbox(sql_engine) == []  # published: out of the outbox
    # The topics were made as the service makes them (the status topic too, which
    # nothing publishes to here).
    assert {topics.events, topics.status} <= await _topic_names(kafka_broker)
    messages = await read_topic(kafka_broker, topics.events, at_least=CUSTOMERS)
    events = [json.loads(m.value) for m in messages]
    assert sorted((e["customerId"], e["eventId"]) for e in events) == [
        (r["customer_id"], r["idempotency_key"]) for r in pending
    ]
    assert all(e["eventType"] == "CREATE" and e["version"] == 1 for e in events)
    assert sorted(m.key.decode() for m in messages) == [str(r["customer_id"]) for r in pending]
    assert await crm_control.requests() == []


async def test_retry_in_kafka_mode_without_a_broker_fails_the_requests_quickly(
    database_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    sql_engine: AsyncEngine,
) -> None:
    topics = Topics.fresh()
    await _leave_in_outbox(database_url, crm)
    nobody = f"127.0.0.1:{free_port()}"  # no broker listens there

    retried = await _retry(**_env(database_url, crm, topics, nobody))

    assert retried.returncode == 0, retried.stderr
    # Bounded: a refused connection fails each publish at once; not the 60 s of `_retry`.
    assert retried.seconds < 20, retried.seconds
    assert json.loads(retried.stdout) == {
        "attempted": CUSTOMERS,
        "delivered": 0,
        "failed": CUSTOMERS,
        "dead": 0,
    }, retried.stderr
    rows = await _outbox(sql_engine)
    assert [r["status"] for r in rows] == ["failed"] * CUSTOMERS
    for row in rows:
        assert row["last_error"].startswith("Kafka publish failed:"), row
        assert nobody.split(":")[1] in row["last_error"], row  # names the broker it tried
    assert await crm_control.requests() == []  # and no call to the CRM's REST API


async def test_retry_without_a_broker_keeps_the_outbox_for_the_next_run(
    database_url: str,
    crm: LiveServer,
    crm_control: CrmControl,
    kafka_broker: Broker,
    sql_engine: AsyncEngine,
) -> None:
    """What a run without a broker failed, a run with one publishes: nothing lost."""
    topics = Topics.fresh()
    await _leave_in_outbox(database_url, crm)
    down = await _retry(**_env(database_url, crm, topics, f"127.0.0.1:{free_port()}"))
    assert json.loads(down.stdout)["failed"] == CUSTOMERS, down.stderr

    up = await _retry(**_env(database_url, crm, topics, kafka_broker.bootstrap))
    assert json.loads(up.stdout)["delivered"] == CUSTOMERS, up.stderr

    assert await _outbox(sql_engine) == []
    assert len(await read_topic(kafka_broker, topics.events, at_least=CUSTOMERS)) == CUSTOMERS
    assert await crm_control.requests() == []
