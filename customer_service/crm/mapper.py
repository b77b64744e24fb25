"""Our customer as the outbox keeps it (`snapshot`), and as the CRM mock's own API takes it
(`CustomerMapper`, `to_mock_record`).

An outbox row carries the customer's own fields, not one CRM's record: each connector
maps them to its CRM's (the mock joins the address parts into one string; HubSpot and
Salesforce keep them apart). The keys are those `CRM_FIELD_MAP` names: `firstName`,
`lastName`, `email`, `phone`, `address.street`, `address.city`, `address.state`,
`address.postalCode`, `address.country`, and `id`. A row written before this (its payload
already the mock's record, with `externalId`) is sent as it is.
"""

from collections.abc import Mapping
from typing import Any

from customer_service.crm.schemas import CrmCustomerRequest
from customer_service.customers.models import Customer

ADDRESS_PARTS = ("street", "city", "state", "postalCode", "country")

ADDRESS_SEPARATOR = ", "


def format_address(*parts: str | None) -> str:
    """The present parts (street, city, state, postalCode, country) joined by ", "."""
    return ADDRESS_SEPARATOR.join(p.strip() for p in parts if p is not None and p.strip())


def snapshot(customer: Customer) -> dict[str, Any]:
    """The customer's fields as an outbox row keeps them."""
    return {
        "id": customer.id,
        "firstName": customer.first_name,
        "lastName": customer.last_name,
        "email": customer.email,
        "phone": customer.phone,
        "address.street": customer.street,
        "address.city": customer.city,
        "address.state": customer.state,
        "address.postalCode": customer.postal_code,
        "address.country": customer.country,
    }


def customer_fields(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """An outbox payload as customer fields. A row written before payloads were the
    customer's fields (the mock's record, its address one string) reads with the whole
    address as the street."""
    if "externalId" not in payload:
        return payload
    return {
        "id": payload.get("externalId"),
        "firstName": payload.get("firstName"),
        "lastName": payload.get("lastName"),
        "email": payload.get("email"),
        "phone": payload.get("phone"),
        "address.street": payload.get("address") or None,
    }


def to_mock_record(payload: dict[str, Any]) -> dict[str, Any]:
    """An outbox payload as the CRM mock's `CrmCustomerRequest` (and Kafka's `customer`)."""
    if "externalId" in payload:
        return payload  # written before payloads were snapshots: the record already
    return CrmCustomerRequest(
        external_id=str(payload["id"]),
        first_name=payload["firstName"],
        last_name=payload["lastName"],
        email=payload["email"],
        phone=payload.get("phone"),
        address=format_address(*(payload.get(f"address.{part}") for part in ADDRESS_PARTS)),
    ).to_json()


def address_parts_of(payload: dict[str, Any] | None) -> dict[str, str | None] | None:
    """An outbox payload's address, part by part as the API has it (`street`, `city`,
    `state`, `postalCode`, `country`): what a Kafka event carries besides the mock's record,
    whose address is one string, so that a consumer writing to a CRM that keeps the parts
    apart (`customer-service sink`) need not split it. None for a DELETE or a payload
    written before payloads were snapshots."""
    if payload is None or "externalId" in payload:
        return None
    return {part: payload.get(f"address.{part}") for part in ADDRESS_PARTS}


class CustomerMapper:
    """Pure mapping, no I/O."""

    @staticmethod
    def to_crm(customer: Customer) -> CrmCustomerRequest:
        return CrmCustomerRequest(
            external_id=str(customer.id),
            first_name=customer.first_name,
            last_name=customer.last_name,
            email=customer.email,
            phone=customer.phone,
            address=format_address(
                customer.street,
                customer.city,
                customer.state,
                customer.postal_code,
                customer.country,
            ),
        )
