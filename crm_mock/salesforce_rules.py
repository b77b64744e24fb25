"""The pure rules of the CRM mock's Salesforce face (`crm_mock.salesforce`): the Contact
fields and how they map onto the mock's record, which records Salesforce would refuse and
with which error code, the little SOQL the connector sends, and the shapes of Salesforce's
answers. No I/O here.

What Salesforce does, as read in its own pages (the wording and code here are ours):

- sObject Collections upsert by an external id field: PATCH, up to 200 records of the type
  in the URI, each with `attributes.type`, results in the order of the records, 200 for a
  well-formed request with `success` and `errors` per record, 400 for one that is not:
  https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-upsert.html
- errors are a JSON list of `{message, errorCode}` (with `fields` where a field is the
  cause); 401 `INVALID_SESSION_ID` for an expired or invalid token, 403 for a refused
  request such as `REQUEST_LIMIT_EXCEEDED`:
  https://developer.salesforce.com/docs/atlas.en-us.264.0.api_rest.meta/api_rest/errorcodes.htm
  and https://developer.salesforce.com/docs/platform/connect-rest-api/guide/connect_error_responses
- the OAuth token answer (`access_token`, `instance_url`, `id`, `token_type`, `issued_at`,
  `signature`) and its `{error, error_description}` refusals: the token response type of
  jsforce, https://jsforce.github.io/jsforce/types/oauth2.TokenResponse.html
- query results page with `done`, `totalSize`, `records` and `nextRecordsUrl`, as
  simple-salesforce's `query_all` follows them (its source: `Salesforce.query_more`).
"""

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crm_mock.hubspot_rules import Contact, is_valid_email

SOBJECT = "Contact"
DEFAULT_EXTERNAL_ID_FIELD = "Crm_Sync_Id__c"
MAX_RECORDS = 200
MAX_EXTERNAL_ID_LENGTH = 255
DEFAULT_BATCH_SIZE = 2000
MIN_BATCH_SIZE = 200
# A Contact field -> the contact field it writes, with Salesforce's maximum length.
FIELD_MAP = {
    "FirstName": ("first_name", 40),
    "LastName": ("last_name", 80),
    "Email": ("email", 80),
    "Phone": ("phone", 40),
    "MailingStreet": ("street", 255),
    "MailingCity": ("city", 40),
    "MailingState": ("state", 80),
    "MailingPostalCode": ("postal_code", 20),
    "MailingCountry": ("country", 80),
}
# Fields a query may read besides those.
READ_ONLY_FIELDS = ("Id", "Name", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted")
_CANONICAL = {name.lower(): name for name in (*FIELD_MAP, *READ_ONLY_FIELDS)}
_VERSION = re.compile(r"^v\d{2,3}\.\d$")
_CUSTOM_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,37}__c$")


def is_version(segment: str) -> bool:
    """Whether a path segment names an API version (`v62.0`)."""
    return _VERSION.match(segment) is not None


def is_external_id_field(name: str) -> bool:
    """Whether `name` can be the external id field: any custom field (`..__c`), which in
    the mock all hold the record's external id."""
    return _CUSTOM_FIELD.match(name) is not None


def canonical_field(name: str) -> str | None:
    """A field's API name as Salesforce spells it (names are case-insensitive), or None
    when a Contact of the mock has no such field; a custom field keeps its spelling."""
    if is_external_id_field(name):
        return name
    return _CANONICAL.get(name.lower())


def sf_time(moment: datetime) -> str:
    """A timestamp as Salesforce writes it: `2024-05-01T12:00:00.000+0000`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def field_value(contact: Contact, name: str) -> Any:
    """The value of a (canonical) field of a contact."""
    if name in FIELD_MAP:
        return contact.value(FIELD_MAP[name][0])
    if name == "Id":
        return contact.id
    if name == "Name":
        return " ".join(part for part in (contact.first_name, contact.last_name) if part)
    if name == "CreatedDate":
        return sf_time(contact.created_at)
    if name in ("LastModifiedDate", "SystemModstamp"):
        return sf_time(contact.updated_at)
    if name == "IsDeleted":
        return False
    return contact.external_id  # a custom field: the external id


def record_url(version: str, crm_id: str) -> str:
    return f"/services/data/{version}/sobjects/{SOBJECT}/{crm_id}"


def sobject(contact: Contact, fields: Sequence[str], version: str) -> dict[str, Any]:
    """A Contact as Salesforce answers one: `attributes`, then the fields asked for."""
    body: dict[str, Any] = {"attributes": {"type": SOBJECT, "url": record_url(version, contact.id)}}
    for name in fields:
        body[name] = field_value(contact, name)
    return body


# --- errors ----------------------------------------------------------------------------


def errors(message: str, code: str, fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Salesforce's error document for a whole call: a list of `{message, errorCode}`."""
    error: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        error["fields"] = list(fields)
    return [error]


@dataclass(frozen=True, slots=True)
class RecordError:
    """One entry of a record result's `errors`."""

    status_code: str
    message: str
    fields: tuple[str, ...] = ()

    def body(self) -> dict[str, Any]:
        return {
            "statusCode": self.status_code,
            "message": self.message,
            "fields": list(self.fields),
        }


class Refused(Exception):
    """A whole call Salesforce refuses: its status and error document."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


def bad_request(message: str, code: str) -> Refused:
    return Refused(400, errors(message, code))


def rolled_back() -> RecordError:
    return RecordError(
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using "
        "AllOrNone header",
    )


def lock_error(detail: str) -> RecordError:
    """What a record the fault switch's `errorRate` draws fails with."""
    return RecordError(
        "UNABLE_TO_LOCK_ROW", f"unable to obtain exclusive access to this record ({detail})"
    )


# --- upserts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpsertRecord:
    """One record of an upsert, checked: its position, its external id (None when it has
    none), the fields it changes, and the error that refuses it (None: it may be applied,
    unless the contact is new and has no last name: `missing_last_name`)."""

    index: int
    external_id: str | None
    changes: dict[str, str | None]
    error: RecordError | None


def collection_records(body: Any) -> tuple[list[dict[str, Any]], bool]:
    """The records and `allOrNone` of a collections body, or `Refused` (400)."""
    if not isinstance(body, dict):
        raise bad_request("The body must be an object with `records`.", "JSON_PARSER_ERROR")
    records = body.get("records")
    all_or_none = body.get("allOrNone", False)
    if not isinstance(all_or_none, bool):
        raise bad_request("allOrNone must be true or false.", "JSON_PARSER_ERROR")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise bad_request("`records` must be a list of objects.", "JSON_PARSER_ERROR")
    if not records:
        raise bad_request("`records` may not be empty.", "INVALID_FIELD")
    if len(records) > MAX_RECORDS:
        raise bad_request(
            f"record limit reached. cannot submit more than {MAX_RECORDS} records into this call",
            "EXCEEDED_ID_LIMIT",
        )
    return records, all_or_none


def plan_upserts(
    records: Sequence[Mapping[str, Any]], external_id_field: str
) -> list[UpsertRecord]:
    """Check each record of a collections upsert. The whole call is refused (`Refused`,
    400) for a record that is not a Contact or that names a field a Contact of the mock
    does not have, or that may not be written (`Id`, the read-only ones). A record is
    refused on its own for a missing external id (`MISSING_ARGUMENT`), an external id an
    earlier record names (`DUPLICATE_VALUE`), a value of the wrong type, an invalid email
    (`INVALID_EMAIL_ADDRESS`), a value too long (`STRING_TOO_LONG`) or a last name set to
    nothing (`REQUIRED_FIELD_MISSING`)."""
    planned = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        attributes = record.get("attributes")
        kind = attributes.get("type") if isinstance(attributes, dict) else None
        if kind != SOBJECT:
            raise bad_request(
                f"Record {index}: `attributes.type` must be {SOBJECT!r}, as in the URI.",
                "INVALID_TYPE",
            )
        planned.append(plan_record(index, record, external_id_field, seen))
    return planned


def plan_record(
    index: int, record: Mapping[str, Any], external_id_field: str, seen: set[str] | None = None
) -> UpsertRecord:
    """Check one record's fields (see `plan_upserts`); `seen` collects the external ids of
    a collection's earlier records."""
    changes: dict[str, str | None] = {}
    external_id: str | None = None
    error: RecordError | None = None
    for name, raw in record.items():
        if name == "attributes":
            continue
        if name.lower() == external_id_field.lower():
            external_id = _text(raw) if isinstance(raw, str | int) else None
            continue
        canonical = canonical_field(name)
        if canonical is None or canonical not in FIELD_MAP:
            raise bad_request(
                f"No such column '{name}' on sobject of type {SOBJECT}"
                if canonical is None
                else f"Unable to create/update fields: {canonical}.",
                "INVALID_FIELD",
            )
        if (raw is not None and not isinstance(raw, str | int | float)) or isinstance(raw, bool):
            error = error or RecordError(
                "INVALID_TYPE_ON_FIELD_IN_RECORD",
                f"{canonical}: value not of required type: {raw!r}",
                (canonical,),
            )
            continue
        value = _text(raw)
        field_name, max_length = FIELD_MAP[canonical]
        if value is not None and len(value) > max_length:
            error = error or RecordError(
                "STRING_TOO_LONG",
                f"{canonical}: data value too large: {value[:40]} (max length={max_length})",
                (canonical,),
            )
        elif canonical == "Email" and value is not None and not is_valid_email(value):
            error = error or RecordError(
                "INVALID_EMAIL_ADDRESS", f"Email: invalid email address: {value}", ("Email",)
            )
        elif canonical == "LastName" and value is None:
            error = error or missing_last_name()
        changes[field_name] = value
    if external_id is None or len(external_id) > MAX_EXTERNAL_ID_LENGTH:
        error = RecordError("MISSING_ARGUMENT", f"{external_id_field} not specified")
    elif seen is not None:
        if external_id in seen:
            error = RecordError(
                "DUPLICATE_VALUE",
                f"Duplicate external id specified: {external_id}",
                (external_id_field,),
            )
        seen.add(external_id)
    return UpsertRecord(index, external_id, changes, error)


def missing_last_name() -> RecordError:
    return RecordError(
        "REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]", ("LastName",)
    )


def _text(raw: Any) -> str | None:
    """A field value as the mock keeps it: text, None for null or ""."""
    if raw is None:
        return None
    value = raw if isinstance(raw, str) else str(raw)
    return value or None


def result(
    crm_id: str | None, *, created: bool = False, error: RecordError | None = None
) -> dict[str, Any]:
    """One record's result, as Salesforce's UpsertResult (and delete's) shows it."""
    return {
        "id": crm_id,
        "success": error is None,
        "errors": [] if error is None else [error.body()],
        "created": created,
    }


# --- SOQL ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Soql:
    """What a query asks: its fields (canonical names), an optional filter on the external
    id or the Id (`field`, `values`), and a limit."""

    fields: tuple[str, ...]
    filter_field: str | None
    values: tuple[str, ...]
    limit: int | None


_QUERY = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>\w+)(?:\s+(?P<direction>ASC|DESC))?)?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_WHERE = re.compile(
    r"^(?P<field>\w+)\s*(?:=\s*(?P<one>'(?:[^'\\]|\\.)*')|IN\s*\((?P<many>.*)\))$",
    re.IGNORECASE | re.DOTALL,
)
_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")


def parse_soql(text: str) -> Soql:
    """The simple SOQL the connector sends (a field list, `FROM Contact`, an optional
    `WHERE <field> = '...'` or `IN ('...', ...)` on the external id field or `Id`,
    `ORDER BY Id`, `LIMIT n`), or `Refused` (400 `MALFORMED_QUERY`, `INVALID_FIELD`,
    `INVALID_TYPE`)."""
    match = _QUERY.match(text or "")
    if match is None:
        raise bad_request(
            "The mock understands SELECT <fields> FROM Contact [WHERE <field> = '...' | "
            "IN ('...')] [ORDER BY Id] [LIMIT n]",
            "MALFORMED_QUERY",
        )
    if match["object"].lower() != SOBJECT.lower():
        raise bad_request(f"sObject type '{match['object']}' is not supported.", "INVALID_TYPE")
    fields = []
    for raw_name in match["fields"].split(","):
        name = raw_name.strip()
        canonical = canonical_field(name)
        if canonical is None:
            raise bad_request(f"No such column '{name}' on entity '{SOBJECT}'.", "INVALID_FIELD")
        if canonical not in fields:
            fields.append(canonical)
    order = match["order"]
    if order is not None and (
        order.lower() != "id" or (match["direction"] or "ASC").upper() != "ASC"
    ):
        raise bad_request("The mock orders by Id (ascending) only.", "MALFORMED_QUERY")
    filter_field: str | None = None
    values: tuple[str, ...] = ()
    if match["where"] is not None:
        filter_field, values = _parse_where(match["where"].strip())
    limit = int(match["limit"]) if match["limit"] is not None else None
    return Soql(tuple(fields), filter_field, values, limit)


def _parse_where(where: str) -> tuple[str, tuple[str, ...]]:
    condition = _WHERE.match(where)
    if condition is None:
        raise bad_request(
            "The mock filters with <field> = '...' or <field> IN ('...', ...) only.",
            "MALFORMED_QUERY",
        )
    field_name = canonical_field(condition["field"])
    if field_name is None:
        raise bad_request(
            f"No such column '{condition['field']}' on entity '{SOBJECT}'.", "INVALID_FIELD"
        )
    if field_name != "Id" and not is_external_id_field(field_name):
        raise bad_request(
            "The mock filters on the external id field or Id only.", "MALFORMED_QUERY"
        )
    if condition["one"] is not None:
        return field_name, (_unquote(condition["one"][1:-1]),)
    listed = condition["many"].strip()
    values = tuple(_unquote(found) for found in _STRING.findall(listed))
    if not values or _STRING.sub("", listed).replace(",", "").strip():
        raise bad_request("IN takes a list of quoted strings.", "MALFORMED_QUERY")
    return field_name, values


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def batch_size(options: str | None) -> int:
    """The page size a query asked for with `Sforce-Query-Options: batchSize=N` (Salesforce
    takes 200 to 2000), else 2000."""
    found = re.search(r"batchSize\s*=\s*(\d+)", options or "")
    if found is None:
        return DEFAULT_BATCH_SIZE
    return min(DEFAULT_BATCH_SIZE, max(MIN_BATCH_SIZE, int(found[1])))


# --- OAuth -----------------------------------------------------------------------------


def oauth_error(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


def token_signature(secret: str, identity_url: str, issued_at: str) -> str:
    """The token answer's `signature`: HMAC-SHA256 of the identity URL and the issue time,
    keyed with the client secret, in base64."""
    digest = hmac.new(secret.encode(), (identity_url + issued_at).encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()
