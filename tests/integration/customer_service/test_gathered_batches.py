"""Live deliveries gather: at most `GATHER_BATCHES` batches start within
`STEADY_GATHER_SECONDS`, or within `GATHER_SECONDS` when the service is short of its loop
(the API in many transactions at once, or the process near its core), the kicks in
between going into the next, larger batch; every customer is still delivered, once. A
kick after a quiet moment starts its batch at once (the sync lag wants it)."""

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from outbox_support import outbox_emptied
from support import FakeConnector, post_customers

from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.sync import engine as engine_module
from customer_service.sync.connector import Change
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.outcome import Delivered, Outcome

CUSTOMERS = 40


async def _deliver_kicked_one_by_one(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    api_load: int,
    cpu_share: float = 0.0,
) -> tuple[list[float], list[int]]:
    """Kick CUSTOMERS customers one by one, 2 ms apart, with the API that busy and the
    process at that share of its core; the times live batches were started, and the
    customers the CRM got, in order."""
    settings = make_settings(sync_enabled=False)  # the app's own engine stays idle
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        ids = await post_customers(app, CUSTOMERS, "G")
        sent: list[int] = []

        async def answer(change: Change) -> Outcome:
            await asyncio.sleep(0.01)
            sent.append(change.customer_id)
            return Delivered(f"crm-{change.customer_id}")

        engine = DeliveryEngine(
            app.state.sessionmaker,
            FakeConnector(answer),
            settings,
            api_load=lambda: api_load,
            cpu_share=lambda: cpu_share,
        )
        started: list[float] = []
        real_batch = engine._live_batch

        def live_batch() -> Coroutine[Any, Any, None]:
            started.append(asyncio.get_running_loop().time())  # the batch's task is made
            return real_batch()

        monkeypatch.setattr(engine, "_live_batch", live_batch)
        for customer_id in ids:
            engine.kick([customer_id])
            await asyncio.sleep(0.002)

        await outbox_emptied(app.state.sessionmaker)
        await engine.close()
    return started, sent


def _most_started_within(started: list[float], seconds: float) -> int:
    return max(sum(1 for t in started if s <= t < s + seconds) for s in started)


async def test_under_a_saturating_load_kicks_gather_into_fewer_batches(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = engine_module.BUSY_API_TRANSACTIONS
    started, sent = await _deliver_kicked_one_by_one(make_settings, monkeypatch, busy)
    assert sorted(sent) == sorted(set(sent)) and len(sent) == CUSTOMERS  # each once
    # A little slack on the window: the loop's clock, read twice.
    window = engine_module.GATHER_SECONDS * 0.98
    assert _most_started_within(started, window) <= engine_module.GATHER_BATCHES
    assert len(started) < CUSTOMERS / 2


async def test_with_the_process_near_its_core_kicks_gather_into_fewer_batches(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API not busy, but the process at `BUSY_CPU_SHARE` of its core: the busy window,
    before requests queue in front of the loop."""
    light = engine_module.BUSY_API_TRANSACTIONS - 1
    started, sent = await _deliver_kicked_one_by_one(
        make_settings, monkeypatch, light, cpu_share=engine_module.BUSY_CPU_SHARE
    )
    assert sorted(sent) == sorted(set(sent)) and len(sent) == CUSTOMERS
    window = engine_module.GATHER_SECONDS * 0.98
    assert _most_started_within(started, window) <= engine_module.GATHER_BATCHES


async def test_under_a_light_load_kicks_gather_within_the_steady_window_only(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A steady stream of kicks (one every 2 ms) with the API not busy: a batch for every
    few customers (before, a batch a kick or two), but not held to the busy window."""
    light = engine_module.BUSY_API_TRANSACTIONS - 1
    started, sent = await _deliver_kicked_one_by_one(
        make_settings, monkeypatch, light, cpu_share=engine_module.BUSY_CPU_SHARE - 0.01
    )
    assert sorted(sent) == sorted(set(sent)) and len(sent) == CUSTOMERS
    steady = engine_module.STEADY_GATHER_SECONDS * 0.98
    assert _most_started_within(started, steady) <= engine_module.GATHER_BATCHES
    assert _most_started_within(started, engine_module.GATHER_SECONDS) > (
        engine_module.GATHER_BATCHES
    )
    assert len(started) < CUSTOMERS / 2


async def test_a_kick_after_a_quiet_moment_starts_its_batch_at_once(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kicks spaced wider than the steady window never wait for it."""
    settings = make_settings(sync_enabled=False)
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        ids = await post_customers(app, 6, "Q")

        async def answer(change: Change) -> Outcome:
            return Delivered(f"crm-{change.customer_id}")

        engine = DeliveryEngine(app.state.sessionmaker, FakeConnector(answer), settings)
        in_kick: list[bool] = []  # for each batch made: whether the kick itself made it
        kicking = False
        real_batch = engine._live_batch

        def live_batch() -> Coroutine[Any, Any, None]:
            in_kick.append(kicking)
            return real_batch()

        monkeypatch.setattr(engine, "_live_batch", live_batch)
        for customer_id in ids:
            await asyncio.sleep(engine_module.STEADY_GATHER_SECONDS * 2)
            kicking = True
            engine.kick([customer_id])
            kicking = False
        await outbox_emptied(app.state.sessionmaker)
        await engine.close()
    # Each batch's task is made in its kick: no timer in between.
    assert in_kick == [True] * len(ids)


async def test_the_services_engine_watches_the_process_cpu(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`create_app` gives its engine the process's CPU gauge: the event loop kept busy (no
    request under way) opens the busy window, and it closes once the process idles again.
    The threshold is lowered so that a machine busy with other tests cannot keep the
    spinning process under it."""
    monkeypatch.setattr(engine_module, "BUSY_CPU_SHARE", 0.2)
    app = create_app(make_settings(), run_scheduler=False)
    async with LifespanManager(app):
        engine: DeliveryEngine = app.state.delivery
        deadline = time.monotonic() + 10
        while not engine._busy():  # spinning on the loop's thread: the process at its core
            assert time.monotonic() < deadline, "the busy window never opened on CPU"
        while engine._busy():
            assert time.monotonic() < deadline, "the busy window never closed"
            await asyncio.sleep(0.05)
