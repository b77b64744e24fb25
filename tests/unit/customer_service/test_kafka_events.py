"""The Kafka wire formats on the service's side: the event a row becomes, and the status
events read back (pure, no broker)."""

import json
from datetime import UTC, datetime

from customer_service.sync.connectors.kafka import encode_event, event_of
from customer_service.sync.models import FailedRequest, Operation
from customer_service.sync.status_consumer import CrmStatus, parse_status

PAYLOAD = {
    "externalId": "42",
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": None,
    "address": "London, GB",
}


def _row(operation: Operation, payload: dict[str, object] | None) -> FailedRequest:
    return FailedRequest(
        id=7,
        customer_id=42,
        operation=operation,
        version=3,
        payload=payload,
        idempotency_key="5f0c1d2e-0000-4000-8000-000000000001",
        created_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
    )


def test_an_update_becomes_the_event_of_the_contract() -> None:
    event = event_of(_row(Operation.UPDATE, PAYLOAD))
    assert event == {
        "eventId": "5f0c1d2e-0000-4000-8000-000000000001",
        "eventType": "UPDATE",
        "customerId": 42,
        "version": 3,
        "occurredAt": "2026-11-24T10:00:00Z",
        "customer": PAYLOAD,
        "addressParts": None,  # a payload written before snapshots: the record only
    }
    assert json.loads(encode_event(event)) == event


def test_an_event_carries_the_address_part_by_part_besides_the_joined_one() -> None:
    snapshot = {
        "id": 42,
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": "ada@example.com",
        "phone": None,
        "address.street": "12 St James's Square, Flat 2",
        "address.city": "London",
        "address.state": None,
        "address.postalCode": "SW1Y 4JH",
        "address.country": "GB",
    }
    event = event_of(_row(Operation.UPDATE, snapshot))
    assert event["customer"]["address"] == "12 St James's Square, Flat 2, London, SW1Y 4JH, GB"
    assert event["addressParts"] == {
        "street": "12 St James's Square, Flat 2",
        "city": "London",
        "state": None,
        "postalCode": "SW1Y 4JH",
        "country": "GB",
    }


def test_a_delete_carries_no_customer() -> None:
    event = event_of(_row(Operation.DELETE, None))
    assert event["eventType"] == "DELETE" and event["customer"] is None
    assert event["addressParts"] is None


def test_status_events_are_read_and_anything_else_is_skipped() -> None:
    applied = b'{"eventId": "e", "customerId": 42, "version": 3, "status": "applied",'
    applied += b' "crmId": "crm_1", "error": null}'
    assert parse_status(applied) == CrmStatus(42, 3, "applied", "crm_1")
    dead = b'{"eventId": "e", "customerId": "42", "version": 4, "status": "dead", "error": "x"}'
    assert parse_status(dead) == CrmStatus(42, 4, "dead", None)
    for junk in (
        b"",
        b"{not json",
        b"[]",
        b'{"customerId": 1}',
        b'{"customerId": 1, "version": 1, "status": "maybe"}',
        None,
    ):
        assert parse_status(junk) is None, junk
