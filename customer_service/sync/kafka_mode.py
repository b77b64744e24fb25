"""`SYNC_MODE=kafka`: the parts the customer service runs besides the delivery engine.

One owner starts and stops them: the publisher (`transports.kafka.KafkaSender`, with the
topics created at start-up), the reader of the CRM's status topic, and the broker probe,
which plays the CRM probe's part: while deliveries are failing it asks the broker every
`RECOVERY_PROBE_SECONDS` whether it is back, and when it is, starts the draining pass.
"""

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.config import Settings
from customer_service.sync.delivery import CrmHealth
from customer_service.sync.hold import HoldKind, HoldReason
from customer_service.sync.status_consumer import StatusConsumer
from customer_service.sync.transports.kafka import KafkaSender

log = logging.getLogger(__name__)


class KafkaMode:
    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self.sender = KafkaSender(settings, sessionmaker)
        self.status = StatusConsumer(settings, sessionmaker)
        self._probe: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None

    async def start(self, *, deliver: bool, probe: bool, health: CrmHealth) -> None:
        """Topics and producer (in the background: a broker that is down or hung must not
        hold up start-up); with `deliver`, the status reader; with `probe`, the broker
        probe."""
        self._starting = asyncio.create_task(self.sender.start(), name="kafka-start")
        if deliver:
            self.status.start()
        if deliver and probe:
            self._probe = asyncio.create_task(self._watch(health), name="broker-probe")

    async def _watch(self, health: CrmHealth) -> None:
        while True:
            await asyncio.sleep(self._settings.recovery_probe_seconds)
            if not health.suspect:
                continue
            if await self.sender.ping():
                log.info("the Kafka broker answers: draining the backlog now")
                health.mark_healthy()  # the recovery pass and the held kicks
            else:
                bootstrap = self._settings.kafka_bootstrap_servers
                health.mark_failing(
                    HoldReason(HoldKind.UNREACHABLE, f"Kafka broker unreachable at {bootstrap}")
                )

    async def close(self) -> None:
        for task in (self._starting, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.status.close()
        await self.sender.close()
