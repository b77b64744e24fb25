"""KAFKA_CONFIRM_SECONDS, and the re-publisher's rounds: pure, no database."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from customer_service.config import Settings, describe_error
from customer_service.sync.models import QueuedRequest
from customer_service.sync.republisher import rounds_of


def _line() -> str:
    with pytest.raises(ValidationError) as caught:
        Settings()
    return describe_error(caught.value)


def test_the_confirmation_wait_defaults_to_a_minute_and_a_bad_value_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().kafka_confirm_seconds == 60
    monkeypatch.setenv("KAFKA_CONFIRM_SECONDS", "2.5")
    assert Settings().kafka_confirm_seconds == 2.5
    monkeypatch.setenv("KAFKA_CONFIRM_SECONDS", "0")
    assert _line() == "invalid setting KAFKA_CONFIRM_SECONDS: Input should be greater than 0"
    monkeypatch.setenv("KAFKA_CONFIRM_SECONDS", "soon")
    assert _line().startswith("invalid setting KAFKA_CONFIRM_SECONDS: Input should be a valid")


def _row(row_id: int, customer_id: int, version: int) -> QueuedRequest:
    at = datetime(2026, 12, 6, tzinfo=UTC)
    return QueuedRequest(
        row_id, customer_id, "UPDATE", "published", 1, None, at, version, {}, None, "k", at, at
    )


def test_rounds_hold_one_version_per_customer_each_customers_oldest_first() -> None:
    a1, a2, a3 = _row(1, 7, 1), _row(4, 7, 2), _row(9, 7, 3)
    b1, c1, c2 = _row(2, 8, 5), _row(3, 9, 1), _row(6, 9, 2)
    rows = [a1, a2, a3, b1, c1, c2]  # as read: by customer, each oldest first
    assert rounds_of(rows) == [[a1, b1, c1], [a2, c2], [a3]]
    assert rounds_of([]) == []
