"""Where a call's trace (its request-log entry, its kept answer) is written: with the call's
own changes when it is alone, in the journal's group when others are under way. Either
way both are committed before the answer leaves."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from crm_mock.app import create_app
from crm_mock.config import CrmSettings
from crm_mock.deps import CrmRuntime

CUSTOMERS = "/api/crm/customers"


@dataclass
class Crm:
    client: httpx.AsyncClient
    runtime: CrmRuntime
    journal_calls: list[int]


@pytest.fixture
async def crm(crm_database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Crm]:
    app = create_app(CrmSettings(_env_file=None, crm_database_url=crm_database_url))
    async with LifespanManager(app):
        runtime: CrmRuntime = app.state.runtime
        calls: list[int] = []
        real = runtime.journal.record

        async def counted(*args: Any, **kwargs: Any) -> None:
            calls.append(1)
            await real(*args, **kwargs)

        monkeypatch.setattr(runtime.journal, "record", counted)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://crm.test") as client:
            yield Crm(client, runtime, calls)


def body(n: int) -> dict[str, str]:
    return {"externalId": str(n), "firstName": "Ada", "lastName": f"L{n}", "email": f"{n}@x.io"}


async def logged(crm: Crm, external_id: str) -> list[dict[str, Any]]:
    page = await crm.client.get("/api/crm/_requests", params={"externalId": external_id})
    items: list[dict[str, Any]] = page.json()["items"]
    return items


async def test_a_lone_call_commits_its_trace_with_its_changes(crm: Crm) -> None:
    created = await crm.client.post(CUSTOMERS, json=body(1), headers={"Idempotency-Key": "k1"})
    assert created.status_code == 201, created.text
    assert crm.journal_calls == [], "a lone call's trace went through the journal"
    assert [(e["method"], e["status"]) for e in await logged(crm, "1")] == [("POST", 201)]

    again = await crm.client.post(CUSTOMERS, json=body(1), headers={"Idempotency-Key": "k1"})
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == created.json()


async def test_calls_under_way_together_are_each_traced_before_they_answer(crm: Crm) -> None:
    await crm.client.put("/api/crm/_faults", json={"latencyMs": 100})  # keeps them together
    answers = await asyncio.gather(
        *(
            crm.client.post(CUSTOMERS, json=body(n), headers={"Idempotency-Key": f"k{n}"})
            for n in range(8)
        )
    )
    assert [a.status_code for a in answers] == [201] * 8
    assert crm.journal_calls, "no call joined the journal's group"
    for n, answer in enumerate(answers):
        assert [e["status"] for e in await logged(crm, str(n))] == [201]
        replay = await crm.client.post(
            CUSTOMERS, json=body(n), headers={"Idempotency-Key": f"k{n}"}
        )
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json() == answer.json()
