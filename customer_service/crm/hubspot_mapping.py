"""Our customer as a HubSpot contact's properties, and back (pure, no I/O).

SPEC section 4b's default mapping: `firstName` firstname, `lastName` lastname, `email`
email, `phone` phone, `address.street` address, `address.city` city, `address.state`
state, `address.postalCode` zip, `address.country` country (HubSpot keeps the address
parts in properties of their own: nothing is joined), and the customer id under
`HUBSPOT_ID_PROPERTY` (a unique custom property that batch upsert matches contacts by).
`CRM_FIELD_MAP` overrides any of them field by field, the id's included (then its
property is the one upserts match by).

An outbox row's payload is the customer's own fields (`crm.mapper.snapshot`). A value we
do not have is sent as "" because an upsert only changes the properties it is sent, and
an empty string is how HubSpot's batch update and upsert clear one:
https://developers.hubspot.com/docs/api-reference/2026-03/crm/objects/contacts/batch/update-contacts
(properties and their internal names:
https://developers.hubspot.com/docs-beta/crm/contacts).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from customer_service.crm.mapper import customer_fields, snapshot
from customer_service.crm.record_fields import VALUE_FIELDS, choose_names
from customer_service.customers.models import Customer

DEFAULT_PROPERTIES: dict[str, str] = {
    "firstName": "firstname",
    "lastName": "lastname",
    "email": "email",
    "phone": "phone",
    "address.street": "address",
    "address.city": "city",
    "address.state": "state",
    "address.postalCode": "zip",
    "address.country": "country",
}


def _text(value: Any) -> str:
    """A property value as HubSpot takes it: text, "" for none."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class PropertyMap:
    """Customer field -> HubSpot contact property, the id's included (`id_property`)."""

    properties: Mapping[str, str]
    id_property: str

    @classmethod
    def of(cls, id_property: str, overrides: Mapping[str, str] | None = None) -> "PropertyMap":
        """The default mapping with HUBSPOT_ID_PROPERTY, then `CRM_FIELD_MAP` on top."""
        return cls(*choose_names(DEFAULT_PROPERTIES, id_property, overrides))

    def names(self) -> list[str]:
        """Every property we write and read, the id property's included."""
        return [*self.properties.values(), self.id_property]

    def to_properties(self, payload: Mapping[str, Any]) -> dict[str, str]:
        """An outbox payload as the properties of a batch upsert input (every mapped
        property, "" for a value we do not have, so the contact ends equal to it)."""
        fields = customer_fields(payload)
        properties = {self.properties[f]: _text(fields.get(f)) for f in VALUE_FIELDS}
        properties[self.id_property] = _text(fields.get("id"))
        return properties

    def external_id(self, properties: Mapping[str, Any]) -> str:
        """The customer id a contact's properties carry ("" when none)."""
        return _text(properties.get(self.id_property))

    def record(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        """A contact as HubSpot answers it (`{"id", "properties"}`) as reconciliation's
        neutral record: its HubSpot `id`, `externalId` and the customer fields."""
        properties = contact.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        record: dict[str, Any] = {
            "id": None if contact.get("id") is None else str(contact["id"]),
            "externalId": self.external_id(properties),
        }
        for field in VALUE_FIELDS:
            value = properties.get(self.properties[field])
            record[field] = None if value in (None, "") else _text(value)
        return record

    @staticmethod
    def expected(customer: Customer) -> dict[str, Any]:
        """What the neutral record of a customer's contact must hold."""
        fields = snapshot(customer)
        expected: dict[str, Any] = {"externalId": str(customer.id)}
        for field in VALUE_FIELDS:
            expected[field] = fields[field]
        return expected
