"""A recovery pass taking over from a periodic pass in flight never strands a connection.

The outside run's hang, provoked directly: a periodic pass over a backlog is interrupted
at a random instant by a recovery pass, over and over. After each handover every
database connection is back in the pool and an API read answers at once.
"""

import asyncio
import random
from collections.abc import Callable
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from support import CrmControl, eventually

from customer_service.app import create_app
from customer_service.config import Settings


async def test_recovery_pass_taking_over_at_random_instants_returns_every_connection(
    make_settings: Callable[..., Settings], crm_control: CrmControl
) -> None:
    settings = make_settings(
        retry_backoff_base_seconds=0.2, retry_backoff_max_seconds=0.2, retry_max_attempts=10**6
    )
    app = create_app(settings, run_scheduler=False)
    rng = random.Random(5)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            await crm_control.faults(down=True, statusCode=503, latencyMs=5)
            ids = []
            for n in range(40):
                body = {"firstName": "H", "lastName": f"{n}", "email": f"h{n}@example.com"}
                response = await client.post("/api/customers", json=body)
                assert response.status_code == 201
                ids.append(response.json()["id"])
            job = app.state.retry_job
            pool = app.state.engine.pool

            async def quiet() -> bool:
                state = {"deliveries": app.state.delivery.in_flight, "out": pool.checkedout()}
                assert state == {"deliveries": 0, "out": 0}, f"round {round_}: {state}"
                return True

            round_ = -1
            for round_ in range(15):
                await eventually(quiet, within=5)
                periodic = asyncio.create_task(job.tick())
                await asyncio.sleep(rng.uniform(0.0, 0.15))
                job.start_forced_pass()
                await asyncio.wait_for(periodic, timeout=10)
                await eventually(lambda: _forced_done(job), within=10)
                await eventually(quiet, within=5)
                read = client.get(f"/api/customers/{ids[round_ % len(ids)]}")
                response = await asyncio.wait_for(read, timeout=1)
                assert response.status_code == 200, f"round {round_}"

            await crm_control.faults(down=False, latencyMs=0)
            job.start_forced_pass()
            await eventually(lambda: _forced_done(job), within=20)

            async def all_synced() -> bool:
                for customer_id in ids:
                    body: dict[str, Any] = (
                        await client.get(f"/api/customers/{customer_id}")
                    ).json()
                    if body["crm"]["status"] != "synced":
                        return False
                return True

            await eventually(all_synced, within=20)


async def _forced_done(job: Any) -> bool:
    return bool(job.idle())
