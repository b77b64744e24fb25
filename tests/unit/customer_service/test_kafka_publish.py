"""How a batch's publishes become outcomes (`KafkaConnector.send`): each event handed
to the producer in turn, the acknowledgements awaited together under one deadline. A
producer that stands in for aiokafka's: `send` appends and returns the future of the
acknowledgement (no broker)."""

import asyncio
import gc
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from customer_service.config import Settings
from customer_service.sync.connector import Change
from customer_service.sync.connectors.kafka import KafkaConnector
from customer_service.sync.models import FailedRequest, Operation
from customer_service.sync.outcome import Delivered, Failed


class Producer:
    """`answers[customer_id]`: "ack", "refuse" (the future fails), "raise" (`send`
    itself raises) or "hang" (no answer until `answer_late`)."""

    def __init__(self, answers: dict[int, str]) -> None:
        self.answers = answers
        self.sent: list[int] = []
        self.hanging: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, key: bytes, value: bytes, headers: Any) -> Any:
        customer_id = int(key)
        answer = self.answers[customer_id]
        if answer == "raise":
            raise RuntimeError("buffer full")
        self.sent.append(customer_id)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if answer == "ack":
            asyncio.get_running_loop().call_soon(future.set_result, "metadata")
        elif answer == "refuse":
            asyncio.get_running_loop().call_soon(future.set_exception, OSError("refused"))
        else:
            self.hanging.append(future)
        return future

    def answer_late(self) -> None:
        for future in self.hanging:
            future.set_exception(OSError("too late"))


def _change(customer_id: int) -> Change:
    row = FailedRequest(
        id=customer_id,
        customer_id=customer_id,
        operation=Operation.CREATE,
        version=1,
        payload={"id": customer_id, "firstName": "A", "lastName": "B", "email": "a@b.io"},
        idempotency_key=f"key-{customer_id}",
        created_at=datetime(2026, 12, 6, tzinfo=UTC),
    )
    return Change(row, None)


def _connector(producer: Producer, timeout: float = 5.0) -> KafkaConnector:
    settings = Settings(
        database_url="sqlite+aiosqlite:///unused.db", sync_mode="kafka", crm_timeout_seconds=timeout
    )
    # Never connected: a publish touches no database.
    connector = KafkaConnector(
        settings, async_sessionmaker(create_async_engine("sqlite+aiosqlite://"))
    )
    connector._topics_ready = True
    connector._producer = producer
    return connector


async def test_each_publish_gets_its_own_outcome_in_the_order_of_the_changes() -> None:
    producer = Producer({1: "ack", 2: "refuse", 3: "raise", 4: "ack"})
    connector = _connector(producer)
    outcomes = await connector.send([_change(n) for n in (1, 2, 3, 4)])
    assert producer.sent == [1, 2, 4]
    assert outcomes[0] == Delivered(None) and outcomes[3] == Delivered(None)
    assert isinstance(outcomes[1], Failed) and "refused" in outcomes[1].error
    assert isinstance(outcomes[2], Failed) and "buffer full" in outcomes[2].error
    # A failed publish has the topics looked at again before the next one.
    assert connector._topics_ready is False


async def test_a_batch_all_acknowledged_keeps_the_topics_known() -> None:
    connector = _connector(Producer({1: "ack", 2: "ack"}))
    outcomes = await connector.send([_change(1), _change(2)])
    assert outcomes == [Delivered(None), Delivered(None)]
    assert connector._topics_ready is True


async def test_an_acknowledgement_missing_at_the_deadline_fails_that_publish_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A future some earlier test left unretrieved is reported when it is collected: let
    # that happen now, so what is logged below is this test's own.
    gc.collect()
    caplog.clear()
    producer = Producer({1: "ack", 2: "hang"})
    connector = _connector(
        producer, timeout=0.05
    )  # the deadline: twice the timeout plus one second
    started = asyncio.get_running_loop().time()
    outcomes = await connector.send([_change(1), _change(2)])
    waited = asyncio.get_running_loop().time() - started
    assert outcomes[0] == Delivered(None)
    assert isinstance(outcomes[1], Failed) and "TimeoutError" in outcomes[1].error
    assert 1.0 <= waited < 5.0
    # The answer that comes after the deadline was counted already: nothing is logged of it.
    producer.answer_late()
    await asyncio.sleep(0)
    gc.collect()
    assert "never retrieved" not in caplog.text
