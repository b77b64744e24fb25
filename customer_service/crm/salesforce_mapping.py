"""Our customer as a Salesforce Contact's fields, and back (pure, no I/O).

SPEC section 4b's default mapping: `firstName` FirstName, `lastName` LastName, `email`
Email, `phone` Phone, the address parts to MailingStreet, MailingCity, MailingState,
MailingPostalCode and MailingCountry (kept apart, nothing joined), and the customer id
under `SALESFORCE_EXTERNAL_ID_FIELD` (an External ID custom field the collections upsert
matches Contacts by:
https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-upsert.html).
`CRM_FIELD_MAP` overrides any of them field by field, the id's included.

A value we do not have is sent as null, which clears the field in Salesforce, so the
Contact ends equal to the customer. Salesforce requires a Contact's LastName: a payload
without one is refused here, before any call (`missing_last_name`), with a message that
names the field, rather than sent to be refused.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from customer_service.crm.mapper import customer_fields, snapshot
from customer_service.crm.record_fields import VALUE_FIELDS, choose_names
from customer_service.customers.models import Customer

SOBJECT = "Contact"
DEFAULT_FIELDS: dict[str, str] = {
    "firstName": "FirstName",
    "lastName": "LastName",
    "email": "Email",
    "phone": "Phone",
    "address.street": "MailingStreet",
    "address.city": "MailingCity",
    "address.state": "MailingState",
    "address.postalCode": "MailingPostalCode",
    "address.country": "MailingCountry",
}
REQUIRED_FIELD = "LastName"


def _value(value: Any) -> str | None:
    """A field value as Salesforce takes it: text, None (null) for none."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text or None


def _get(record: Mapping[str, Any], name: str) -> Any:
    """A field of a record Salesforce answered (field names are case-insensitive)."""
    if name in record:
        return record[name]
    lowered = name.lower()
    return next((v for k, v in record.items() if k.lower() == lowered), None)


@dataclass(frozen=True)
class FieldMap:
    """Customer field -> Contact field, the id's included (`external_id_field`)."""

    fields: Mapping[str, str]
    external_id_field: str

    @classmethod
    def of(cls, external_id_field: str, overrides: Mapping[str, str] | None = None) -> "FieldMap":
        """The default mapping with SALESFORCE_EXTERNAL_ID_FIELD, then `CRM_FIELD_MAP`."""
        return cls(*choose_names(DEFAULT_FIELDS, external_id_field, overrides))

    def names(self) -> list[str]:
        """Every Contact field we write and read, the external id field's included."""
        return [*self.fields.values(), self.external_id_field]

    def to_record(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """An outbox payload as one record of a collections upsert (every mapped field,
        null for a value we do not have)."""
        values = customer_fields(payload)
        record: dict[str, Any] = {"attributes": {"type": SOBJECT}}
        for field in VALUE_FIELDS:
            record[self.fields[field]] = _value(values.get(field))
        record[self.external_id_field] = _value(values.get("id"))
        return record

    def missing_last_name(self, payload: Mapping[str, Any]) -> str | None:
        """Why a payload cannot be a Contact (no value for the field mapped to LastName),
        or None."""
        values = customer_fields(payload)
        for field, name in self.fields.items():
            if name.lower() == REQUIRED_FIELD.lower() and _value(values.get(field)) is None:
                return (
                    f"Salesforce requires a Contact's {REQUIRED_FIELD}, and this customer has"
                    f" no {field} (REQUIRED_FIELD_MISSING, not sent)"
                )
        return None

    def external_id(self, record: Mapping[str, Any]) -> str:
        """The customer id a Contact carries ("" when none)."""
        return _value(_get(record, self.external_id_field)) or ""

    def record(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        """A Contact as a query answers it as reconciliation's neutral record: its
        Salesforce `id`, `externalId` and the customer fields."""
        crm_id = _get(contact, "Id")
        record: dict[str, Any] = {
            "id": None if crm_id is None else str(crm_id),
            "externalId": self.external_id(contact),
        }
        for field in VALUE_FIELDS:
            record[field] = _value(_get(contact, self.fields[field]))
        return record

    @staticmethod
    def expected(customer: Customer) -> dict[str, Any]:
        """What the neutral record of a customer's Contact must hold."""
        fields = snapshot(customer)
        expected: dict[str, Any] = {"externalId": str(customer.id)}
        for field in VALUE_FIELDS:
            expected[field] = _value(fields[field])
        return expected
