"""`RECONCILE_INTERVAL_SECONDS`: a background loop that reconciles and repairs periodically."""

import asyncio
import contextlib
import logging

from customer_service.reconciliation.reconciler import Reconciler

log = logging.getLogger(__name__)


class ReconcileLoop:
    """Owns the periodic task: `start` it with the app, `close` it on shutdown. A run in
    flight at shutdown is cancelled; the fixes it queued are committed rows already."""

    def __init__(self, reconciler: Reconciler, interval: float) -> None:
        self._reconciler = reconciler
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="reconciliation")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._reconciler.run(repair=True)
            except Exception as exc:
                log.warning("periodic reconciliation failed: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._reconciler.drain()
