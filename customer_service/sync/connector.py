"""The seam between the delivery engine and one way out: a CRM's API, or Kafka.

A connector owns everything that differs from one way out to another; the engine
(`sync.engine`) owns everything that does not (claims, order, coalescing, retries,
backoff, holds, settling):

- mapping an outbox request's customer to the CRM's record, and sending changes: one, or
  a batch of up to `batch_size` (one change per customer, each answered on its own);
- what "delivered" means for `crm.status` (`confirms_later`: Kafka hands the event over,
  and the CRM's confirmation arrives later on the status topic);
- the probe (is the CRM, or the broker, taking calls again?);
- its in-flight limit (`calls_in_flight`: calls of live deliveries at once);
- reading the CRM's records for reconciliation (`reader`);
- start and close.

`build_connector` is the one factory: `serve`, `retry`, `reconcile` and the dashboard
all get their connector from it, so `SYNC_MODE` and `CRM_CONNECTOR` are read here only.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from customer_service.config import CrmConnector, Settings, SyncMode
from customer_service.crm.client import CrmClient
from customer_service.crm.shared_ceiling import SharedCeiling, SharedPause
from customer_service.crm.throttle import CallThrottle
from customer_service.reconciliation.records import CrmRecords
from customer_service.sync.hold import HoldReason
from customer_service.sync.models import OutboxRow
from customer_service.sync.outcome import Outcome


@dataclass(frozen=True)
class Change:
    """One customer's next change: the request whose state is sent (its payload, version,
    Idempotency-Key), and the CRM id known for the customer (None: not learnt yet)."""

    request: OutboxRow
    crm_id: str | None

    @property
    def customer_id(self) -> int:
        return self.request.customer_id


class Connector(Protocol):
    # Records one call carries (1: one call per change).
    batch_size: int
    # Calls in flight at once for live deliveries (a retry pass has RETRY_CONCURRENCY).
    calls_in_flight: int
    # Delivered means handed over: the CRM confirms it later (`crm.status` stays pending).
    confirms_later: bool

    async def start(self, serving: bool) -> None:
        """Get ready (in the background where it may wait: start-up never hangs on the
        CRM or the broker); `serving`: in the service, with what only it runs."""

    async def close(self) -> None: ...

    async def send(self, changes: Sequence[Change]) -> list[Outcome]:
        """Deliver up to `batch_size` changes of distinct customers; one outcome each, in
        order. Never raises for the CRM's sake: every failure is a `Failed` outcome."""

    async def probe(self) -> HoldReason | None:
        """Does the way out take calls now? None when it does, else why not."""

    def reader(self) -> "CrmClient | CrmRecords":
        """What reconciliation reads the CRM's records through: neutral records
        (`reconciliation.records`), or the mock's client (wrapped there)."""


CallObserver = Callable[[str, int | None, float], None]


def build_connector(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    on_call: CallObserver | None = None,
    *,
    crm: bool = False,
) -> Connector:
    """The connector `SYNC_MODE` names (README, "Connectors"); `crm`: the CRM's own, the
    one `CRM_CONNECTOR` names, whatever `SYNC_MODE` says (`customer-service sink`'s, and
    the Kafka connector's reader for reconciliation)."""
    # Imported here: each connector pulls in its own client library.
    if settings.sync_mode == SyncMode.KAFKA and not crm:
        from customer_service.sync.connectors.kafka import KafkaConnector

        return KafkaConnector(settings, sessionmaker, on_call)
    if settings.crm_connector == CrmConnector.HUBSPOT:
        from customer_service.sync.connectors.hubspot import HubSpotConnector

        return HubSpotConnector(settings, on_call, throttle_for(settings, sessionmaker))
    if settings.crm_connector == CrmConnector.SALESFORCE:
        from customer_service.sync.connectors.salesforce import SalesforceConnector

        return SalesforceConnector(settings, on_call, throttle_for(settings, sessionmaker))
    from customer_service.sync.connectors.mock import MockConnector

    return MockConnector(settings, on_call, throttle_for(settings, sessionmaker))


def throttle_for(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> CallThrottle:
    """The pace of the process's CRM calls. On PostgreSQL, shared by the replicas
    (`crm.shared_ceiling`): a 429's pause, and CRM_MAX_REQUESTS_PER_SECOND when set."""
    limit = settings.crm_max_requests_per_second
    engine: AsyncEngine = sessionmaker.kw["bind"]
    if engine.dialect.name != "postgresql":
        return CallThrottle(limit)
    shared = SharedCeiling(engine, limit) if limit > 0 else None
    return CallThrottle(limit, shared=shared, shared_pause=SharedPause(engine))
