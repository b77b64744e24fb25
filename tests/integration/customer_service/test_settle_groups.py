"""Batches settle in groups (one transaction for every batch finished meanwhile, led by the
first to settle). Batches running against each other, some of their group transactions
failing and some batches cancelled half-way, must never leave a batch waiting for a group
that nobody runs: afterwards the same engine still delivers every customer, nothing is
lost and nothing is recorded twice. Repeated in a loop: the interleavings differ each
round."""

import asyncio
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from outbox_support import outbox_left
from sqlalchemy import func, select
from support import FakeConnector, eventually

from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.customers.models import Customer
from customer_service.sync import engine as engine_module
from customer_service.sync import repository
from customer_service.sync.connector import Change
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.models import SyncClaim
from customer_service.sync.outcome import Delivered, Outcome
from customer_service.sync.retry import Urgency

CUSTOMERS = 40
ROUNDS = 4


async def _seed(client: httpx.AsyncClient, round_no: int) -> list[int]:
    ids = []
    for n in range(CUSTOMERS):
        body = {"firstName": "G", "lastName": f"{n}", "email": f"g{round_no}-{n}@example.com"}
        ids.append((await client.post("/api/customers", json=body)).json()["id"])
    return ids


@pytest.mark.parametrize("round_no", range(ROUNDS))
async def test_failing_and_cancelled_settle_groups_leave_no_batch_waiting(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, round_no: int
) -> None:
    rng = random.Random(round_no)
    # A short lease: the claims of a group that failed lapse soon, and the customers are
    # delivered again.
    settings = make_settings(sync_enabled=False, claim_lease_seconds=1.0)
    app = create_app(settings, run_scheduler=False)
    real_settle = repository.settle
    failing = {"on": True}

    async def flaky_settle(*args: Any, **kwargs: Any) -> None:
        await real_settle(*args, **kwargs)
        await asyncio.sleep(rng.random() * 0.01)  # the group's transaction stays open a while
        if failing["on"] and rng.random() < 0.3:
            raise RuntimeError("the database refused the group")

    monkeypatch.setattr(repository, "settle", flaky_settle)

    async def answer(change: Change) -> Outcome:
        await asyncio.sleep(rng.random() * 0.01)
        return Delivered(f"crm-{change.customer_id}")

    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            ids = await _seed(client, round_no)
        connector = FakeConnector(answer)
        engine = DeliveryEngine(app.state.sessionmaker, connector, settings)

        # One batch per few customers, all at once; some cancelled at a random moment
        # (sending, waiting for their group, or leading it).
        chunks = [ids[i : i + 3] for i in range(0, len(ids), 3)]
        tasks = [
            asyncio.create_task(engine.deliver(dict.fromkeys(chunk, Urgency.DUE)))
            for chunk in chunks
        ]
        for task in rng.sample(tasks, len(tasks) // 3):
            asyncio.get_running_loop().call_later(rng.random() * 0.03, task.cancel)
        done, pending = await asyncio.wait(tasks, timeout=20)
        assert not pending, f"{len(pending)} batches still waiting for their settle group"
        del done

        # The same engine, its groups no longer failing, delivers what is left.
        failing["on"] = False
        sessionmaker = app.state.sessionmaker

        async def all_delivered() -> bool:
            engine.kick(ids)
            return await outbox_left(sessionmaker) == 0

        await eventually(all_delivered, within=30, interval=0.3)
        await asyncio.wait_for(engine.close(), timeout=10)
        async with sessionmaker() as session:
            synced = await session.scalar(
                select(func.count()).where(Customer.id.in_(ids), Customer.crm_id.is_not(None))
            )
        assert synced == CUSTOMERS


async def test_a_leader_cancelled_inside_its_group_leaves_no_member_waiting(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group's leader is cancelled while its transaction runs (a pass stopped, or a
    shutdown): the batches of its group are answered, not left waiting for ever."""
    settings = make_settings(sync_enabled=False, claim_lease_seconds=1.0)
    app = create_app(settings, run_scheduler=False)
    leaders: list[asyncio.Task[Any]] = []
    groups: list[int] = []

    async def answer(change: Change) -> Outcome:
        return Delivered(f"crm-{change.customer_id}")

    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            ids = await _seed(client, 99)
        engine = DeliveryEngine(app.state.sessionmaker, FakeConnector(answer), settings)
        real_transaction = engine.transaction

        async def slow_groups(work: Any, **kwargs: Any) -> Any:
            # A settle group takes a while before its transaction (outside it: SQLite's
            # one writer would otherwise keep the other batches from claiming meanwhile).
            if getattr(work, "func", None) == repository.settle_and_release:
                leader = asyncio.current_task()
                assert leader is not None
                leaders.append(leader)
                groups.append(len(work.keywords["done"]))  # a batch an owner
                await asyncio.sleep(0.5)
            return await real_transaction(work, **kwargs)

        monkeypatch.setattr(engine, "transaction", slow_groups)

        def deliver(customer_id: int) -> "asyncio.Task[Any]":
            return asyncio.create_task(engine.deliver({customer_id: Urgency.DUE}))

        first = deliver(ids[0])
        await eventually(lambda: _true(len(leaders) == 1))  # the first group runs
        queued = [deliver(cid) for cid in ids[1:4]]  # these finish and wait for it
        await eventually(lambda: _true(len(leaders) == 2), within=5)  # the next group runs
        await first
        assert groups[1] == 3, groups  # the three waited, and settle in one group
        leaders[1].cancel()
        done, pending = await asyncio.wait(queued, timeout=10)
        assert not pending, "a batch of the cancelled leader's group is still waiting"
        assert sum(task.cancelled() for task in done) == 1
        del done
        await engine.close()


async def _true(value: bool) -> bool:
    return value


async def test_claims_taken_before_a_failed_plan_are_given_back(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a batch claims and reads in autocommit mode: its claims are committed
    before it plans what to send (on SQLite the claim and the read are two statements of
    that mode too). When what follows the claim fails, the claims are given back at once,
    not left to hold the customers for a whole lease."""
    settings = make_settings(sync_enabled=False, claim_lease_seconds=60)
    app = create_app(settings, run_scheduler=False)

    def broken_plan(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the plan failed")

    async def answer(change: Change) -> Outcome:
        return Delivered(f"crm-{change.customer_id}")

    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            ids = (await _seed(client, 7))[:3]
        engine = DeliveryEngine(app.state.sessionmaker, FakeConnector(answer), settings)
        monkeypatch.setattr(engine_module, "plan_next", broken_plan)
        with pytest.raises(RuntimeError):
            await engine.deliver(dict.fromkeys(ids, Urgency.DUE))
        async with app.state.sessionmaker() as session:
            claims = await session.scalar(select(func.count()).select_from(SyncClaim))
        assert claims == 0
        monkeypatch.undo()
        # The customers are free: the next batch delivers them.
        result = await engine.deliver(dict.fromkeys(ids, Urgency.DUE))
        assert result.counts.delivered == len(ids)
        await engine.close()
