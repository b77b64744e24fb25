"""Kafka plumbing shared by the publisher (`connectors.kafka`) and the status reader:
topics made at start-up, clients stopped whatever their state, partitions the broker
recreated read again."""

import asyncio
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

log = logging.getLogger(__name__)


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int, wait: float) -> None:
    """Create the topics that do not exist yet (an existing one is left as it is)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ms(wait))
    await asyncio.wait_for(admin.start(), wait)
    try:
        existing = set(await asyncio.wait_for(admin.list_topics(), wait))
        missing = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if missing:
            await asyncio.wait_for(admin.create_topics(missing), wait)
            log.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()


async def stop_quietly(client: Any) -> None:
    """Stop an aiokafka client whatever state it is in. Its own tasks may end in
    CancelledError while it stops (a broker gone at the same moment); that is not ours,
    so it runs as a task of its own and only our own cancellation propagates."""
    task = asyncio.ensure_future(client.stop())
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.debug("stopping %s: %s", type(client).__name__, task.exception())


async def rewind_recreated(consumer: Any) -> None:
    """Read again from the start every assigned partition that ends before our position.

    On a real Kafka that never happens; it means the broker lost the topic and it was made
    anew (Tansu's memory storage after a restart), and a consumer left at its old offset
    would skip what the new partition holds until it grows past it."""
    behind = [tp for tp in consumer.assignment() if await _past_the_end(consumer, tp)]
    if behind:
        log.warning("partitions %s were recreated by the broker: reading them again", behind)
        await consumer.seek_to_beginning(*behind)


async def _past_the_end(consumer: Any, tp: Any) -> bool:
    """Is our position past the end of the partition, as the last fetch answered it?

    The high watermark of the fetch responses, not `end_offsets`: Tansu's ListOffsets
    answers one past the first offset of the partition's last record batch, short of the
    end whenever a producer sent more than one record in a batch, which made a consumer
    that had read everything start over. No fetch answered yet: nothing known."""
    highwater = consumer.highwater(tp)
    return highwater is not None and bool(await consumer.position(tp) > highwater)


def ms(seconds: float) -> int:
    return max(1000, int(seconds * 1000))
