"""The sink's pure rules (`customer_service.sink`): events read, batches of a poll (one
event per customer, order kept), retries holding only their customer, what may be
committed, duplicates, and what an outcome makes of an event. No broker, no database."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from customer_service.crm.hubspot_mapping import PropertyMap
from customer_service.sink.backlog import Backlog, Entry, Retry
from customer_service.sink.events import (
    CustomerEvent,
    InvalidEvent,
    change_of,
    parse_event,
    status_event,
)
from customer_service.sink.ledger import Settled
from customer_service.sink.verdict import Again, Applied, Dead, Repeat, judge, repeat_of
from customer_service.sync.hold import HoldKind
from customer_service.sync.models import Operation
from customer_service.sync.outcome import Delivered, Failed
from customer_service.sync.retry import RetryPolicy

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
POLICY = RetryPolicy(base=1.0, maximum=60.0, max_attempts=3)
RECORD = {
    "externalId": "42",
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": None,
    "address": "12 St James's Square, Flat 2, London, GB",
}
PARTS = {
    "street": "12 St James's Square, Flat 2",
    "city": "London",
    "state": None,
    "postalCode": None,
    "country": "GB",
}


def _raw(event_type: str = "UPDATE", version: int = 2, **extra: object) -> bytes:
    body: dict[str, object] = {
        "eventId": f"e-{event_type}-{version}",
        "eventType": event_type,
        "customerId": 42,
        "version": version,
        "occurredAt": "2026-12-06T10:00:00Z",
        "customer": None if event_type == "DELETE" else RECORD,
        **extra,
    }
    return json.dumps(body).encode()


def _event(
    customer_id: int, version: int, operation: Operation = Operation.UPDATE
) -> CustomerEvent:
    return CustomerEvent(f"e{customer_id}-{version}", operation, customer_id, version, NOW, {})


def _entry(partition: int, offset: int, customer_id: int, version: int) -> Entry[int]:
    return Entry(partition, offset, None, None, _event(customer_id, version))


# -- events -------------------------------------------------------------------------------


def test_an_event_with_its_address_parts_becomes_the_customers_own_fields() -> None:
    event = parse_event(_raw(addressParts=PARTS))
    assert event.payload == {
        "id": 42,
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": "ada@example.com",
        "phone": None,
        "address.street": "12 St James's Square, Flat 2",
        "address.city": "London",
        "address.state": None,
        "address.postalCode": None,
        "address.country": "GB",
    }
    change = change_of(event, 7, "hs-1")
    assert (change.customer_id, change.crm_id) == (42, "hs-1")
    assert change.request.idempotency_key == "e-UPDATE-2"
    # HubSpot gets the parts apart, the street with its comma.
    properties = PropertyMap.of("crm_sync_id").to_properties(change.request.payload or {})
    assert properties["address"] == "12 St James's Square, Flat 2"
    assert properties["city"] == "London"


def test_an_event_without_address_parts_is_handed_over_as_the_mocks_record() -> None:
    event = parse_event(_raw())
    assert event.payload == RECORD
    assert parse_event(_raw("DELETE", 3)).payload is None
    assert parse_event(_raw("DELETE", 3)).rank == parse_event(_raw("UPDATE", 3)).rank + 1


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        _raw("UPSERT"),
        _raw(customerId="x"),
        _raw(customer=None),
        _raw(customer={**RECORD, "externalId": "41"}),
    ],
)
def test_what_is_not_a_customer_event_is_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidEvent, match="invalid event"):
        parse_event(raw)


def test_the_status_event_is_the_contracts() -> None:
    event = parse_event(_raw())
    assert json.loads(status_event(event, "dead", None, "refused")) == {
        "eventId": "e-UPDATE-2",
        "customerId": 42,
        "version": 2,
        "status": "dead",
        "crmId": None,
        "error": "refused",
    }


# -- the backlog ----------------------------------------------------------------------------


def test_a_batch_takes_one_event_per_customer_oldest_first() -> None:
    backlog: Backlog[int] = Backlog()
    backlog.add([_entry(0, 0, 1, 1), _entry(0, 1, 1, 2), _entry(0, 2, 2, 1), _entry(0, 3, 1, 3)])
    first = backlog.next_batch(NOW, 100)
    assert [(e.event.customer_id, e.offset) for e in first] == [(1, 0), (2, 2)]  # type: ignore[union-attr]
    assert backlog.next_batch(NOW, 100) == []  # both customers in flight
    for entry in first:
        backlog.settle(entry)
    assert [e.offset for e in backlog.next_batch(NOW, 100)] == [1]
    assert backlog.commits() == {0: 1}


def test_a_retry_holds_its_customer_only_and_the_commit_stops_before_it() -> None:
    backlog: Backlog[int] = Backlog()
    backlog.add([_entry(0, 10, 1, 1), _entry(0, 11, 2, 1), _entry(0, 12, 1, 2)])
    failing, other = backlog.next_batch(NOW, 100)
    later = NOW + timedelta(seconds=5)
    backlog.retry_later(failing, Retry(1, later, later))
    backlog.settle(other)
    assert backlog.next_batch(NOW, 100) == []  # customer 1's next waits behind its retry
    assert backlog.commits() == {0: 10}
    assert backlog.next_due() == later
    assert not backlog.ready(NOW) and backlog.ready(later)
    [again] = backlog.next_batch(later, 100)
    assert again is failing and backlog.retry_of(again) == Retry(1, later, later)
    backlog.settle(again)
    backlog.committed(backlog.commits())
    [last] = backlog.next_batch(later, 100)
    assert last.offset == 12
    backlog.settle(last)
    assert backlog.commits() == {0: 13}


def test_a_crm_back_pulls_every_retry_forward() -> None:
    backlog: Backlog[int] = Backlog()
    backlog.add([_entry(0, 0, 1, 1)])
    [entry] = backlog.next_batch(NOW, 10)
    due = NOW + timedelta(minutes=5)
    backlog.retry_later(entry, Retry(3, due, due))
    backlog.pull_forward(NOW)
    assert backlog.next_batch(NOW, 10) == [entry]
    assert backlog.retry_of(entry) == Retry(3, NOW, due, pulled=True)


def test_invalid_messages_go_first_and_forgotten_partitions_are_dropped() -> None:
    backlog: Backlog[int] = Backlog()
    junk: Entry[int] = Entry(1, 5, b"1", b"{", InvalidEvent("invalid event: x"))
    backlog.add([_entry(0, 0, 1, 1), junk, _entry(1, 6, 2, 1)])
    assert backlog.next_batch(NOW, 1) == [junk]
    backlog.settle(junk)
    backlog.forget([1])
    assert [e.offset for e in backlog.next_batch(NOW, 10)] == [0]
    assert backlog.unsettled(1) == 0 and set(backlog.commits()) == {0}


def test_a_batch_holds_at_most_its_limit() -> None:
    backlog: Backlog[int] = Backlog()
    backlog.add(_entry(0, n, n, 1) for n in range(10))
    assert len(backlog.next_batch(NOW, 4)) == 4
    assert len(backlog.next_batch(NOW, 100)) == 6


# -- verdicts -------------------------------------------------------------------------------


def test_an_event_settled_before_is_not_sent_again() -> None:
    event = _event(1, 3)
    assert repeat_of(event, None) is None
    newer = Settled(1, 2 * 2, "e1-2", "applied", "hs-1")
    assert repeat_of(event, newer) is None
    same = Settled(1, event.rank, event.event_id, "dead", "hs-1", "refused")
    assert repeat_of(event, same) == Repeat("dead", "hs-1", "refused")
    later = Settled(1, 4 * 2, "e1-4", "applied", "hs-1")
    assert repeat_of(event, later) == Repeat("applied", "hs-1", None)


def test_reconciliations_repairs_are_sent_though_their_rank_was_settled() -> None:
    event = _event(1, 3)
    # The customer's current version queued again (its record missing or edited in the
    # CRM) under a new eventId: sent, not taken for the settled one.
    first = Settled(1, event.rank, "the-first-e1-3", "applied", "hs-1")
    assert repeat_of(event, first) is None
    # The DELETE of a record no customer of ours has (version 0): never stale.
    record_delete = _event(1, 0, Operation.DELETE)
    assert record_delete.record_delete and not _event(1, 3, Operation.DELETE).record_delete
    assert repeat_of(record_delete, Settled(1, 4 * 2 + 1, "e1-4", "applied", None)) is None
    assert repeat_of(record_delete, Settled(1, 1, record_delete.event_id, "applied", None))


def test_what_an_outcome_makes_of_an_event() -> None:
    event = _event(1, 2)
    assert judge(event, Delivered("hs-2"), "hs-1", None, POLICY, NOW) == Applied("hs-2")
    assert judge(event, Delivered(None), "hs-1", None, POLICY, NOW) == Applied("hs-1")
    gone = _event(1, 2, Operation.DELETE)
    assert judge(gone, Delivered(None), "hs-1", None, POLICY, NOW) == Applied(None)
    refused = Failed("HubSpot answered 400", 400, whole_call=False)
    assert judge(event, refused, None, None, POLICY, NOW) == Dead("HubSpot answered 400", 1)
    # One record's 500 in a batch: retried, the CRM not held.
    flaky = judge(event, Failed("500", 500, whole_call=False), None, None, POLICY, NOW)
    assert isinstance(flaky, Again) and flaky.hold is None and flaky.retry.attempts == 1
    assert flaky.retry.due > NOW
    # The whole call refused by a CRM that is down: retried, and deliveries held.
    down = judge(event, Failed("503", 503), None, None, POLICY, NOW)
    assert isinstance(down, Again) and down.hold == HoldKind.CRM_ERROR
    unanswered = judge(event, Failed("refused"), None, None, POLICY, NOW)
    assert isinstance(unanswered, Again) and unanswered.hold == HoldKind.UNREACHABLE
    # Retry-After is honoured; the last attempt is dead.
    limited = judge(event, Failed("429", 429, "30"), None, None, POLICY, NOW)
    assert isinstance(limited, Again) and limited.retry.due >= NOW + timedelta(seconds=30)
    spent = Retry(2, NOW, NOW)
    assert judge(event, Failed("503", 503), None, spent, POLICY, NOW) == Dead("503", 3)


def test_a_retry_pulled_forward_that_fails_again_costs_nothing() -> None:
    due = NOW + timedelta(minutes=5)
    pulled = Retry(2, NOW, due, pulled=True)
    verdict = judge(_event(1, 2), Failed("503", 503), None, pulled, POLICY, NOW)
    assert isinstance(verdict, Again)
    assert verdict.retry.attempts == 2 and verdict.retry.due == due
