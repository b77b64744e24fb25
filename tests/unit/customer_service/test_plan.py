from datetime import UTC, datetime, timedelta

from customer_service.sync.models import FailedRequest
from customer_service.sync.plan import Batch, Hold, plan_next

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def Row(
    row_id: int, operation: str, status: str = "pending", next_attempt_at: datetime = NOW
) -> FailedRequest:
    return FailedRequest(
        id=row_id, operation=operation, status=status, next_attempt_at=next_attempt_at
    )


def test_empty_queue_holds() -> None:
    assert plan_next([], NOW, force=False) is Hold.EMPTY


def test_dead_head_holds_newer_requests_back() -> None:
    rows = [Row(1, "UPDATE", status="dead"), Row(2, "UPDATE")]
    assert plan_next(rows, NOW, force=True) is Hold.DEAD


def test_head_in_backoff_waits_unless_forced() -> None:
    rows = [Row(1, "CREATE", status="failed", next_attempt_at=NOW + timedelta(minutes=5))]
    assert plan_next(rows, NOW, force=False) is Hold.NOT_DUE
    assert plan_next(rows, NOW, force=True) == Batch(send=rows[0], settles=[rows[0]])


def test_create_is_sent_alone_before_updates() -> None:
    rows = [Row(1, "CREATE"), Row(2, "UPDATE"), Row(3, "UPDATE")]
    assert plan_next(rows, NOW, force=False) == Batch(send=rows[0], settles=[rows[0]])


def test_run_of_updates_is_coalesced_into_the_newest() -> None:
    rows = [Row(2, "UPDATE"), Row(3, "UPDATE"), Row(4, "UPDATE"), Row(5, "DELETE")]
    batch = plan_next(rows, NOW, force=False)
    assert isinstance(batch, Batch)
    assert batch.send.id == 4
    assert [r.id for r in batch.settles] == [2, 3, 4]


def test_coalescing_stops_at_a_dead_update() -> None:
    rows = [Row(2, "UPDATE"), Row(3, "UPDATE", status="dead"), Row(4, "UPDATE")]
    batch = plan_next(rows, NOW, force=False)
    assert isinstance(batch, Batch)
    assert [r.id for r in batch.settles] == [2]
