"""The look for a partition the broker lost and made anew (`rewind_recreated`, on both
sides), against the real Tansu broker: a consumer that has read everything stays where it
is, even when the last records came in one batch, which Tansu's ListOffsets answers short
of the end; one whose position is past the partition's end reads it again."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka_support import Broker, Topics

from crm_mock import consumer as crm_consumer
from customer_service.sync import kafka_admin as service_kafka

Rewind = Callable[[Any], Awaitable[None]]


@pytest.mark.parametrize(
    "rewind",
    [crm_consumer.rewind_recreated, service_kafka.rewind_recreated],
    ids=["crm-consumer", "status-consumer"],
)
async def test_a_consumer_at_the_end_stays_and_one_past_the_end_starts_over(
    kafka_broker: Broker, rewind: Rewind
) -> None:
    topic = Topics.fresh().events
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=50)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"alone", partition=0)
        # Ten records in one batch (sent together, acknowledged together).
        batch = [await producer.send(topic, b"batched", partition=0) for _ in range(10)]
        await asyncio.gather(*batch)
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        read = 0
        deadline = time.monotonic() + 20
        while read < 11 or consumer.highwater(tp) is None:
            assert time.monotonic() < deadline, f"read {read} of 11"
            read += sum(len(m) for m in (await consumer.getmany(timeout_ms=200)).values())
        assert await consumer.position(tp) == 11

        await rewind(consumer)
        assert await consumer.position(tp) == 11

        # As if the broker had lost the topic and made it anew, shorter than our position.
        consumer.seek(tp, 50)
        deadline = time.monotonic() + 20
        while (await consumer.position(tp)) == 50:
            assert time.monotonic() < deadline, "never read the partition again"
            await consumer.getmany(timeout_ms=200)
            await rewind(consumer)
        assert await consumer.position(tp) in (0, 11)
    finally:
        await consumer.stop()
        await producer.stop()
