"""The Kafka commands of `crm-mock`: `consume`, `dlq list` and `dlq replay`."""

import asyncio
import json
import signal
import sys

from crm_mock import ledger, store
from crm_mock.config import CrmSettings
from crm_mock.consumer import CrmConsumer
from crm_mock.dlq_replay import replay_letters


def run_consumer(settings: CrmSettings) -> int:
    """`crm-mock consume`: until SIGINT or SIGTERM, then leave the group cleanly."""
    return asyncio.run(_consume(settings))


async def _consume(settings: CrmSettings) -> int:
    engine = store.create_engine(settings.crm_database_url)
    try:
        await store.create_tables(engine)
        consumer = CrmConsumer(settings, store.create_sessionmaker(engine))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, consumer.stop)
        await consumer.run()
    finally:
        await engine.dispose()
    return 0


def list_letters(settings: CrmSettings) -> int:
    """`crm-mock dlq list`: one JSON object a line, oldest first."""
    for letter in asyncio.run(_open_letters(settings)):
        print(json.dumps(letter))
    return 0


async def _open_letters(settings: CrmSettings) -> list[dict[str, object]]:
    engine = store.create_engine(settings.crm_database_url)
    try:
        await store.create_tables(engine)
        async with store.create_sessionmaker(engine)() as session:
            return [ledger.letter_view(letter) for letter in await ledger.open_letters(session)]
    finally:
        await engine.dispose()


def replay(settings: CrmSettings, letter_id: int | None) -> int:
    """`crm-mock dlq replay ID|--all`: exit 1 when a letter is unknown or failed again."""
    applied, failed = asyncio.run(_replay(settings, letter_id))
    for done in applied:
        print(f"dead letter {done}: applied")
    for letter, error in failed.items():
        print(f"dead letter {letter}: not applied: {error}", file=sys.stderr)
    if letter_id is not None and not applied and not failed:
        print(f"no open dead letter {letter_id}", file=sys.stderr)
        return 1
    return 1 if failed else 0


async def _replay(settings: CrmSettings, letter_id: int | None) -> tuple[list[int], dict[int, str]]:
    engine = store.create_engine(settings.crm_database_url)
    try:
        await store.create_tables(engine)
        report = await replay_letters(settings, store.create_sessionmaker(engine), letter_id)
    finally:
        await engine.dispose()
    return report.applied, report.failed
