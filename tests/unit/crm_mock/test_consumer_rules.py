"""The CRM consumer's pure rules: reading an event, ranking a customer's events, backoff."""

import json

import pytest

from crm_mock.consumer import BACKOFF_MAX_SECONDS, backoff
from crm_mock.events import InvalidEvent, external_id_of, parse_event, status_event

CUSTOMER = {
    "externalId": "42",
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": None,
    "address": "",
}


def _event(**changes: object) -> bytes:
    body = {
        "eventId": "e1",
        "eventType": "UPDATE",
        "customerId": 42,
        "version": 2,
        "occurredAt": "2026-11-24T10:00:00Z",
        "customer": CUSTOMER,
        **changes,
    }
    return json.dumps(body).encode()


def test_a_valid_event_is_read() -> None:
    event = parse_event(_event())
    assert event.event_type == "UPDATE" and event.external_id == "42"
    assert event.customer is not None and event.customer.first_name == "Ada"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid event"),
        (_event(eventType="UPSERT"), "eventType"),
        (_event(customer=None), "needs its customer"),
        (_event(customerId=7), "not the event's customerId"),
        (_event(customer={**CUSTOMER, "email": "nope"}), "email"),
        (_event(version=-1), "version"),
    ],
)
def test_an_event_the_crm_cannot_apply_is_invalid(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(raw)


def test_a_delete_ranks_after_the_write_of_its_version_and_before_the_next() -> None:
    write = parse_event(_event(version=2))
    delete = parse_event(_event(version=2, eventType="DELETE", customer=None))
    newer = parse_event(_event(version=3))
    assert write.rank < delete.rank < newer.rank


def test_backoff_doubles_from_a_tenth_of_a_second_up_to_its_ceiling() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert backoff(30) == BACKOFF_MAX_SECONDS


def test_the_key_names_a_customer_only_when_it_is_one() -> None:
    assert external_id_of(b"42") == "42"
    assert external_id_of(b"abc") is None
    assert external_id_of(None) is None
    assert external_id_of(b"\xff") is None


def test_status_event_is_the_contract_shape() -> None:
    body = json.loads(status_event("e1", 42, 2, "applied", "crm_1", None))
    assert body == {
        "eventId": "e1",
        "customerId": 42,
        "version": 2,
        "status": "applied",
        "crmId": "crm_1",
        "error": None,
    }
