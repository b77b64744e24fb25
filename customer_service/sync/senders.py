"""The sender of a delivery pass run outside the service (`customer-service retry`), as
`SYNC_MODE` picks it (README: HTTP or Kafka)."""

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from customer_service.config import Settings, SyncMode
from customer_service.sync.delivery import Sender
from customer_service.sync.transports.kafka import KafkaSender


@contextlib.asynccontextmanager
async def sender_for(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], http: Sender
) -> AsyncIterator[Sender]:
    """`http` under `SYNC_MODE=http` (its client stays the caller's to close).

    Under `kafka`, a `KafkaSender` started as the service starts it (the missing topics
    created, then the producer) and closed on the way out; the CRM's REST API is never
    called. A broker that is down or hung costs a warning and a start that gives up within
    a few CRM_TIMEOUT_SECONDS; each publish then fails, bounded by it too, and is recorded
    as the service records it (`failed`, the reason as its last error)."""
    if settings.sync_mode != SyncMode.KAFKA:
        yield http
        return
    kafka = KafkaSender(settings, sessionmaker)
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.close()
