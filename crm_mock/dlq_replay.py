"""`crm-mock dlq replay`: apply open dead letters again, under the fault switch."""

from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_mock import ledger, store
from crm_mock.applier import Applied, Applier, Refused
from crm_mock.config import CrmSettings
from crm_mock.consumer import stop_quietly
from crm_mock.events import parse_event, status_event


@dataclass(frozen=True)
class ReplayReport:
    applied: list[int]
    failed: dict[int, str]


async def replay_letters(
    settings: CrmSettings,
    sessionmaker: async_sessionmaker[AsyncSession],
    letter_id: int | None,
) -> ReplayReport:
    """Apply open dead letters (one, or all oldest first) now, under the fault switch.

    An applied letter has its `applied` status published, then is closed; one that fails
    again stays open, and so do the later letters of that customer (they keep their
    order). Without a broker nothing is applied: the customer service would never learn
    of it."""
    async with sessionmaker() as session:
        letters = list(await ledger.open_letters(session, letter_id))
    report = ReplayReport([], {})
    if not letters:
        return report
    applier = Applier(sessionmaker)
    blocked: set[str | None] = set()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_idempotent_producer,
        request_timeout_ms=5000,
    )
    try:
        await producer.start()
    except Exception as exc:
        await stop_quietly(producer)
        error = f"Kafka at {settings.kafka_bootstrap_servers}: {type(exc).__name__}: {exc}"
        if settings.kafka_idempotent_producer:
            error += " (a broker without the idempotent producer, such as Tansu, needs"
            error += " KAFKA_IDEMPOTENT_PRODUCER=false)"
        return ReplayReport([], {letter.id: error for letter in letters})
    try:
        for letter in letters:
            if letter.external_id in blocked:
                report.failed[letter.id] = "waits behind an earlier letter of this customer"
                continue
            try:
                event = parse_event(letter.event.encode())
                result = await applier.apply(event, replay=True)
                if isinstance(result, Applied):
                    value = status_event(
                        event.event_id,
                        event.customer_id,
                        event.version,
                        "applied",
                        result.crm_id,
                        None,
                    )
                    key = event.external_id.encode()
                    await producer.send_and_wait(settings.kafka_status_topic, key=key, value=value)
            except Exception as exc:
                result = Refused(f"{type(exc).__name__}: {exc}", permanent=True)
            if not isinstance(result, Applied):
                assert isinstance(result, Refused)
                report.failed[letter.id] = result.error
                blocked.add(letter.external_id)
                continue
            async with sessionmaker() as session, session.begin():
                stored = await ledger.get_letter(session, letter.id)
                if stored is not None:
                    stored.replayed_at = store.utc_now()
            report.applied.append(letter.id)
    finally:
        await stop_quietly(producer)
    return report
