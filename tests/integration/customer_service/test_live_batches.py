"""Live deliveries' bound: at most the connector's `calls_in_flight` CRM calls at once for
kicked customers, while more customers than that are claimed and read in the batches
around them (a slot is held for the call only, so the bookkeeping never keeps the CRM
waiting)."""

import asyncio
from collections.abc import Callable

from asgi_lifespan import LifespanManager
from outbox_support import outbox_emptied
from sqlalchemy import func, select
from support import FakeConnector, post_customers

from customer_service.app import create_app
from customer_service.config import Settings
from customer_service.sync.connector import Change
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.models import SyncClaim
from customer_service.sync.outcome import Delivered, Outcome

SLOTS = 2
CUSTOMERS = 12


class SlowCrm:
    """Answers every call after a pause, noting at each call the customers claimed."""

    def __init__(self, sessionmaker: object) -> None:
        self.sessionmaker = sessionmaker
        self.most_claimed = 0

    async def answer(self, change: Change) -> Outcome:
        async with self.sessionmaker() as session:  # type: ignore[operator]
            claimed = await session.scalar(select(func.count()).select_from(SyncClaim))
        self.most_claimed = max(self.most_claimed, int(claimed or 0))
        await asyncio.sleep(0.05)
        return Delivered(f"crm-{change.customer_id}")


async def test_kicked_deliveries_hold_a_slot_for_the_crm_call_only(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(sync_enabled=False)  # the app's own engine stays idle
    app = create_app(settings, run_scheduler=False)
    async with LifespanManager(app):
        ids = await post_customers(app, CUSTOMERS, "D")
        crm = SlowCrm(app.state.sessionmaker)
        connector = FakeConnector(crm.answer, calls_in_flight=SLOTS)
        engine = DeliveryEngine(app.state.sessionmaker, connector, settings)
        engine.kick(ids)

        await outbox_emptied(app.state.sessionmaker)
        await engine.close()
    assert connector.calls == CUSTOMERS
    assert connector.most_in_flight == SLOTS
    # Customers beyond the slots were claimed (and read) while the calls were out.
    assert crm.most_claimed > SLOTS
