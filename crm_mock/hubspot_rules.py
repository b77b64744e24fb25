"""The pure rules of the CRM mock's HubSpot face (`crm_mock.hubspot`): how a contact's
properties map onto the mock's record, which batch inputs HubSpot would refuse, and the
shapes of HubSpot's answers. No I/O here.

A contact as both faces see it (`Contact`) is the store's record with its address in
parts (street, city, state, postal code, country); the mock's own API shows those parts
joined as SPEC section 4 says (`join_address`). The Salesforce face uses the same.

What HubSpot does, as read in its own pages (the wording and code here are ours):

- batch upsert by a unique property, up to 100 inputs, 200 with `status`, `results` (each
  with `new`), `startedAt`, `completedAt`; 207 adds `errors` and `numErrors`:
  https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts
  and https://developers.hubspot.com/docs/api-reference/latest/crm/objects/contacts/batch/upsert-contacts
- invalid property values refuse the whole call with 400, category `VALIDATION_ERROR`, a
  message listing each bad value (`INVALID_EMAIL` for an address in a bad format):
  https://developers.hubspot.com/changelog/upcoming-property-validations-rules-will-be-enforced-for-apis-and-integrations
  and https://community.hubspot.com/t5/APIs-Integrations/contacts-integration-invalid-e-mails/td-p/833439
- error objects carry `status`, `message`, `correlationId`, `category`, and in a batch
  `context` (lists of strings, such as the `ids` concerned), `errors` and `links`: the
  models of HubSpot's own client (hubspot-api-client, `StandardError`, `ErrorDetail`).
- rate limits: 429 with `errorType` `RATE_LIMIT` and `policyName` (`DAILY`, or the
  rolling ten-second window), and the `X-HubSpot-RateLimit-*` headers:
  https://developers.hubspot.com/docs/api/usage-details and
  https://developers.hubspot.com/changelog/2018-11-06-rate-limit-information-headers-will-be-included-in-http-responses
- a missing or refused token answers 401 with category `INVALID_AUTHENTICATION`:
  https://community.hubspot.com/t5/APIs-Integrations/Improvements-to-authentication-errors-for-V3-endpoints-in/m-p/325369
"""

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# --- the contact both faces see --------------------------------------------------------

# The record's fields as the faces write them, in the order of SPEC section 4b.
FIELDS = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "street",
    "city",
    "state",
    "postal_code",
    "country",
)
ADDRESS_PARTS = ("street", "city", "state", "postal_code", "country")
# What the store keeps at most (its columns and the mock's own request model).
MAX_LENGTHS = {
    "first_name": 100,
    "last_name": 100,
    "email": 320,
    "phone": 100,
    # The joined address is kept at most 2000 characters: five parts of 300 and their
    # separators stay below.
    **dict.fromkeys(ADDRESS_PARTS, 300),
}


@dataclass(frozen=True, slots=True)
class Contact:
    """A record of the store as the faces see it: its address in parts."""

    id: str
    external_id: str
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    street: str | None
    city: str | None
    state: str | None
    postal_code: str | None
    country: str | None
    created_at: datetime
    updated_at: datetime
    # The HubSpot property the external id was last written under (None: the default).
    id_property: str | None = None

    def value(self, name: str) -> str | None:
        """The value of one of `FIELDS`."""
        value: str | None = getattr(self, name)
        return value


def join_address(parts: Mapping[str, str | None]) -> str:
    """The address as the mock's own API shows it: the parts present, in the order street,
    city, state, postal code, country, joined by ", " (SPEC section 4)."""
    return ", ".join(value for name in ADDRESS_PARTS if (value := parts.get(name)))


def address_parts(
    address: str, kept: Mapping[str, str | None] | None, kept_joined: str | None
) -> dict[str, str | None]:
    """A record's address in parts: those the faces kept, while they still join to the
    record's address; else (the mock's own API or its Kafka consumer changed the address
    since, or never wrote parts) the whole address as the street."""
    if kept is not None and kept_joined == address:
        return {name: kept.get(name) or None for name in ADDRESS_PARTS}
    return {name: (address or None) if name == "street" else None for name in ADDRESS_PARTS}


def merged_fields(current: Contact | None, changes: Mapping[str, str | None]) -> dict[str, Any]:
    """A contact's fields after `changes` (a subset of `FIELDS`; None or "" clears one):
    the others keep their value, as HubSpot and Salesforce update only what they are sent;
    a new contact starts empty."""
    values: dict[str, str | None] = {
        name: current.value(name) if current is not None else None for name in FIELDS
    }
    for name, value in changes.items():
        values[name] = value or None
    return values


def too_long(name: str, value: str | None) -> bool:
    """Whether a value is longer than the store keeps."""
    return value is not None and len(value) > MAX_LENGTHS[name]


# --- HubSpot's contact properties ------------------------------------------------------

DEFAULT_ID_PROPERTY = "crm_sync_id"
MAX_INPUTS = 100
MAX_PAGE = 100
DEFAULT_PAGE = 10
# Property name -> the contact field it writes.
PROPERTY_FIELDS = {
    "firstname": "first_name",
    "lastname": "last_name",
    "email": "email",
    "phone": "phone",
    "address": "street",
    "city": "city",
    "state": "state",
    "zip": "postal_code",
    "country": "country",
}
READ_ONLY = frozenset({"hs_object_id", "createdate", "lastmodifieddate"})
# What a read without `properties` shows, as HubSpot does.
DEFAULT_PROPERTIES = (
    "createdate",
    "email",
    "firstname",
    "hs_object_id",
    "lastmodifieddate",
    "lastname",
)
# A custom property's internal name: what the mock takes as an id property.
_PROPERTY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
# HubSpot checks the format, and that the domain ends in a top-level domain.
_EMAIL = re.compile(r"^[^@\s\"]+@[^@\s\"]+\.[A-Za-z][A-Za-z0-9-]*[A-Za-z0-9]$")


def is_valid_email(value: str) -> bool:
    """Whether HubSpot (as the mock sees it) takes `value` as an email address."""
    return len(value) <= MAX_LENGTHS["email"] and _EMAIL.match(value) is not None


def hs_time(moment: datetime) -> str:
    """A timestamp as HubSpot writes it: UTC, milliseconds, `Z`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def properties_of(
    contact: Contact, wanted: Sequence[str] | None = None, *, id_property: str | None = None
) -> dict[str, str | None]:
    """A contact's properties: those `wanted` that it has (None: HubSpot's default set),
    always with `createdate`, `hs_object_id` and `lastmodifieddate`; unknown names are left
    out, as HubSpot leaves them out. The external id shows under the contact's own id
    property, or `id_property` (what a read names), or `crm_sync_id`."""
    own = id_property or contact.id_property or DEFAULT_ID_PROPERTY
    every: dict[str, str | None] = {
        name: contact.value(field_name) for name, field_name in PROPERTY_FIELDS.items()
    }
    every[own] = contact.external_id
    every["createdate"] = hs_time(contact.created_at)
    every["lastmodifieddate"] = hs_time(contact.updated_at)
    every["hs_object_id"] = contact.id
    names = list(DEFAULT_PROPERTIES if wanted is None else wanted)
    names += [
        name for name in ("createdate", "hs_object_id", "lastmodifieddate") if name not in names
    ]
    return {name: every[name] for name in names if name in every}


def all_properties(contact: Contact) -> list[str]:
    """Every property a contact has, for the answer of an upsert."""
    return [*PROPERTY_FIELDS, contact.id_property or DEFAULT_ID_PROPERTY]


def public_object(
    contact: Contact, properties: dict[str, str | None], *, new: bool | None = None
) -> dict[str, Any]:
    """A contact as HubSpot answers one (`new` only in an upsert's results)."""
    body: dict[str, Any] = {
        "id": contact.id,
        "properties": properties,
        "createdAt": hs_time(contact.created_at),
        "updatedAt": hs_time(contact.updated_at),
        "archived": False,
    }
    if new is not None:
        body["new"] = new
    return body


# --- errors ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Detail:
    """One entry of an error's `errors`."""

    message: str
    code: str
    in_: str | None = None
    context: dict[str, list[str]] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.in_ is not None:
            detail["in"] = self.in_
        if self.context:
            detail["context"] = self.context
        return detail


def error_body(
    message: str,
    category: str,
    *,
    details: Sequence[Detail] = (),
    context: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """A HubSpot error document for a whole call."""
    body: dict[str, Any] = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    if details:
        body["errors"] = [detail.body() for detail in details]
    if context:
        body["context"] = context
    return body


def batch_error(
    message: str, category: str, *, ids: Sequence[str], extra: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """One entry of a 207's `errors`: a failure of some records of a batch (named in its
    `context.ids`), in the shape of HubSpot's `StandardError`."""
    return {
        "status": "error",
        "category": category,
        "message": message,
        "context": {"ids": list(ids), **(extra or {})},
        "errors": [],
        "links": {},
    }


def category_of(status: int) -> str:
    """The error category HubSpot gives an answer of this status."""
    return {
        400: "VALIDATION_ERROR",
        401: "INVALID_AUTHENTICATION",
        403: "MISSING_SCOPES",
        404: "OBJECT_NOT_FOUND",
        409: "CONFLICT",
        429: "RATE_LIMITS",
    }.get(status, "VALIDATION_ERROR" if status < 500 else "INTERNAL_ERROR")


def rate_limit_body(policy: str, message: str) -> dict[str, Any]:
    """HubSpot's 429 document: `policyName` says which limit (`DAILY`, or
    `TEN_SECONDLY_ROLLING`)."""
    return {
        "status": "error",
        "message": message,
        "errorType": "RATE_LIMIT",
        "correlationId": str(uuid.uuid4()),
        "policyName": policy,
        "requestId": str(uuid.uuid4()),
    }


class Refused(Exception):
    """A whole call HubSpot refuses: its status and error document."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body


def invalid(message: str, *details: Detail, context: dict[str, list[str]] | None = None) -> Refused:
    """A 400 `VALIDATION_ERROR` refusal of the whole call."""
    return Refused(400, error_body(message, "VALIDATION_ERROR", details=details, context=context))


# --- batch upsert ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpsertInput:
    """One input of a batch upsert, checked: the external id (the id property's value),
    the id property's name, and the fields it changes."""

    index: int
    external_id: str
    id_property: str
    changes: dict[str, str | None]


def batch_inputs(body: Any, limit: int = MAX_INPUTS) -> list[dict[str, Any]]:
    """The inputs of a batch body (`{"inputs": [...]}`, 1 to `limit` objects); refuses a
    body that is no batch as HubSpot does (400)."""
    if not isinstance(body, dict):
        raise invalid("Invalid input JSON: the body must be an object with `inputs`.")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(item, dict) for item in inputs):
        raise invalid("Invalid input JSON: `inputs` must be a list of objects.")
    if not inputs:
        raise invalid("Invalid input JSON: `inputs` is empty.")
    if len(inputs) > limit:
        raise invalid(
            f"Batch input limit exceeded: {len(inputs)} inputs sent, at most {limit} taken.",
            context={"limit": [str(limit)]},
        )
    return inputs


def stated_id(raw: Any) -> str | None:
    """The `id` an input names, if it names one."""
    value = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    return value if isinstance(value, str) and value else None


def _text(value: Any) -> str | None:
    """A property value as HubSpot keeps it: a string (numbers and booleans as text);
    None or "" clears the property."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(type(value).__name__)


def plan_upsert(body: Any) -> list[UpsertInput]:
    """The inputs of a batch upsert, or `Refused` (400) for the whole call when any input
    is one HubSpot refuses: no `id` or `idProperty`, an id property that is a standard
    one, a property the mock's contacts do not have or that is read-only, an invalid
    email, a value longer than the store keeps, or an id given twice. Every bad input is
    named in the refusal's `errors` (with its `index` and `id` in `context`)."""
    inputs = batch_inputs(body)
    details: list[Detail] = []
    planned: list[UpsertInput] = []
    seen: dict[str, int] = {}
    duplicates: list[str] = []
    for index, raw in enumerate(inputs):
        external_id = stated_id(raw)
        id_property = raw.get("idProperty")
        where = {"index": [str(index)], **({"id": [external_id]} if external_id else {})}
        if external_id is None:
            details.append(Detail("The input has no `id`.", "MISSING_ID", "id", where))
            continue
        if len(external_id) > 255:
            details.append(
                Detail("The `id` is longer than 255 characters.", "INVALID_ID", "id", where)
            )
            continue
        if not isinstance(id_property, str) or not id_property:
            details.append(
                Detail(
                    "The mock upserts by a unique custom property: `idProperty` is required.",
                    "MISSING_ID_PROPERTY",
                    "idProperty",
                    where,
                )
            )
            continue
        if (
            id_property in PROPERTY_FIELDS
            or id_property in READ_ONLY
            or not _PROPERTY_NAME.match(id_property)
        ):
            details.append(
                Detail(
                    f"Unable to upsert by the property {id_property!r}: it is not a unique "
                    "custom property of contacts.",
                    "INVALID_ID_PROPERTY",
                    "idProperty",
                    {**where, "propertyName": [id_property]},
                )
            )
            continue
        properties = raw.get("properties", {})
        if not isinstance(properties, dict):
            details.append(
                Detail("`properties` must be an object.", "INVALID_PROPERTIES", "properties", where)
            )
            continue
        changes, problems = _changes(properties, id_property, external_id, where)
        details.extend(problems)
        if problems:
            continue
        if external_id in seen:
            duplicates.append(external_id)
            continue
        seen[external_id] = index
        planned.append(UpsertInput(index, external_id, id_property, changes))
    if duplicates:
        raise invalid(
            f"Duplicate IDs found in batch input: {sorted(set(duplicates))}. IDs must be unique.",
            context={"ids": sorted(set(duplicates))},
        )
    if details:
        raise invalid(_summary(details), *details)
    return planned


def _changes(
    properties: dict[str, Any], id_property: str, external_id: str, where: dict[str, list[str]]
) -> tuple[dict[str, str | None], list[Detail]]:
    changes: dict[str, str | None] = {}
    problems: list[Detail] = []
    for name, raw_value in properties.items():
        at = {**where, "propertyName": [name]}
        try:
            value = _text(raw_value)
        except TypeError:
            problems.append(
                Detail(f"{raw_value!r} is not a valid value for {name}.", "INVALID_VALUE", name, at)
            )
            continue
        if name == id_property:
            if value != external_id:
                problems.append(
                    Detail(
                        f"{name} is {value!r} in the properties but {external_id!r} as the id.",
                        "INVALID_VALUE",
                        name,
                        at,
                    )
                )
            continue
        if name in READ_ONLY:
            problems.append(
                Detail(
                    f"{name} is a read only property; its value cannot be set.",
                    "READ_ONLY_VALUE",
                    name,
                    at,
                )
            )
            continue
        field_name = PROPERTY_FIELDS.get(name)
        if field_name is None:
            problems.append(
                Detail(f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST", name, at)
            )
            continue
        if field_name == "email" and value and not is_valid_email(value):
            problems.append(Detail(f"Email address {value} is invalid", "INVALID_EMAIL", name, at))
            continue
        if value and too_long(field_name, value):
            problems.append(
                Detail(
                    f"{name} is longer than the {MAX_LENGTHS[field_name]} characters kept.",
                    "INVALID_LENGTH",
                    name,
                    at,
                )
            )
            continue
        changes[field_name] = value or None
    return changes, problems


def _summary(details: Sequence[Detail]) -> str:
    """The message of a refused batch: HubSpot lists each bad property value."""
    values = [
        {"isValid": False, "message": d.message, "error": d.code, "name": d.in_} for d in details
    ]
    return f"Property values were not valid: {json.dumps(values)}"


# --- batch archive and read ------------------------------------------------------------


def plan_archive(body: Any) -> list[str]:
    """The HubSpot ids of a batch archive (`{"inputs": [{"id": ...}]}`), or `Refused`."""
    inputs = batch_inputs(body)
    ids = [stated_id(raw) for raw in inputs]
    missing = [str(index) for index, value in enumerate(ids) if value is None]
    if missing:
        raise invalid("Every input needs an `id`.", context={"index": missing})
    return [value for value in ids if value is not None]


@dataclass(frozen=True, slots=True)
class ReadPlan:
    ids: list[str]
    id_property: str | None  # None: the ids are HubSpot ids
    properties: list[str] | None


def plan_read(body: Any) -> ReadPlan:
    """What a batch read asks for, or `Refused`."""
    inputs = batch_inputs(body)
    ids = [stated_id(raw) for raw in inputs]
    missing = [str(index) for index, value in enumerate(ids) if value is None]
    if missing:
        raise invalid("Every input needs an `id`.", context={"index": missing})
    assert isinstance(body, dict)
    id_property = body.get("idProperty") or None
    if id_property is not None and (
        not isinstance(id_property, str)
        or id_property in PROPERTY_FIELDS
        or (id_property in READ_ONLY and id_property != "hs_object_id")
    ):
        raise invalid(f"Unable to read by the property {id_property!r}: it is not unique.")
    if id_property == "hs_object_id":
        id_property = None
    properties = body.get("properties")
    if properties is not None and (
        not isinstance(properties, list) or not all(isinstance(p, str) for p in properties)
    ):
        raise invalid("`properties` must be a list of property names.")
    return ReadPlan([v for v in ids if v is not None], id_property, properties or None)


def wanted_properties(values: Sequence[str]) -> list[str] | None:
    """The `properties` query parameter (repeated, or comma-separated), None when absent."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return names or None
