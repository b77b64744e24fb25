"""The CRM mock's HubSpot face: HubSpot's CRM v3 contacts endpoints that the HubSpot
connector uses (SPEC section 4b), over the mock's own store, fault switch, request log and
`CRM_API_TOKEN` (README: "The CRM mock's HubSpot face").

- `POST /crm/v3/objects/contacts/batch/upsert`: up to 100 inputs `{"id", "idProperty",
  "properties"}`, created or updated by the id property's value, which is the store's
  `externalId`. An update changes only the properties sent (None or "" clears one), as
  HubSpot's does. 200 `{"status": "COMPLETE", "results", "startedAt", "completedAt"}`,
  each result with HubSpot's `new` flag; 207 adds `errors` and `numErrors` for the inputs
  that the fault switch's `errorRate` draws (one draw per input), which are not applied.
  The whole call is refused with 400 `VALIDATION_ERROR` for an input HubSpot refuses
  (`hubspot_rules.plan_upsert`: an invalid email, an unknown or read-only property, a
  repeated id, ...), and nothing is applied.
- `POST /crm/v3/objects/contacts/batch/archive`: up to 100 `{"id": "<HubSpot id>"}`; 204
  (ids no contact has included, as HubSpot answers), or 207 with `errors` for the ids the
  `errorRate` drew (HubSpot documents no 207 here: the mock's way to fail one record).
- `POST /crm/v3/objects/contacts/batch/read`: by HubSpot id, or by `idProperty`; 207 with
  an `OBJECT_NOT_FOUND` error naming the ids no contact has.
- `GET /crm/v3/objects/contacts?limit=&after=&properties=`: contacts in the order of
  their ids, `paging.next.after` while more follow (`limit` 1 to 100, default 10).

A HubSpot id is the store's own CRM id (`crm_...`, where HubSpot's are numeric strings: a
client only hands them back). The mock's contacts have the properties of SPEC section 4b
(firstname, lastname, email, phone, address, city, state, zip, country), the id property,
and the read-only `hs_object_id`, `createdate`, `lastmodifieddate`. The id property is any
custom property name (`crm_sync_id` by default, as the connector's HUBSPOT_ID_PROPERTY);
the one a contact was last upserted by is kept, and reads show the external id under it.

Storage decision: the store keeps one address string (SPEC section 4) and is not migrated
(`store.create_tables` creates missing tables only). The faces keep a contact's address
parts, and the id property's name, in a table of their own, `crm_contact_parts` (one row
per record, created by the same `create_all`, so an existing database gains it at the next
start without a migration), together with the address string those parts joined to. The
record's `address` stays the parts joined (SPEC section 4), so the mock's own API shows the
joined address; when that string no longer matches the kept one (the mock's own API or its
Kafka consumer rewrote the record), the faces show the whole address as the street
(`hubspot_rules.address_parts`). The Salesforce face (`crm_mock.salesforce`) shares this
(`upsert_contacts`, `contacts_of`, ...).

Faults, limits and credentials come from `gateway.FaceCallsGateway`, answered here in
HubSpot's words (`HubSpotFace`): `down` and a drawn call answer `statusCode` with a HubSpot
error document; past `rateLimitPerSecond`, 429 `RATE_LIMIT` with `policyName`
`TEN_SECONDLY_ROLLING`; past the optional fault field `dailyLimit` (calls of this face per
UTC day, counted afresh when the field changes), 429 with `policyName` `DAILY`; a missing
or wrong token while `CRM_API_TOKEN` is set, 401 `INVALID_AUTHENTICATION`. Every answer
carries `X-HubSpot-RateLimit-Max` / `-Remaining` / `-Interval-Milliseconds` (the mock's
window is one second: 1000) and `-Daily` / `-Daily-Remaining` (1,000,000,000 while no
limit is set). Each record of a batch is its own entry of `GET /api/crm/_requests`.

HubSpot's own pages read for this, and the rules: see `crm_mock.hubspot_rules`; also
https://developers.hubspot.com/docs-beta/crm/contacts (contacts, properties).
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import String, Table, Text, bindparam, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from starlette.types import Scope

from crm_mock import hubspot_rules as rules
from crm_mock import store
from crm_mock.batch import Subject
from crm_mock.deps import CrmRuntime, RuntimeDep, SessionDep, report_record_statuses
from crm_mock.faults import InjectedFault, decide_fault
from crm_mock.gateway import NO_LIMIT, Answer, Call, Usage, is_authorized, parse_json_body
from crm_mock.hubspot_rules import Contact, Refused
from crm_mock.schemas import CrmCustomerRequest

CONTACTS_PATH = "/crm/v3/objects/contacts"
UPSERT_PATH = f"{CONTACTS_PATH}/batch/upsert"
ARCHIVE_PATH = f"{CONTACTS_PATH}/batch/archive"
READ_PATH = f"{CONTACTS_PATH}/batch/read"
BATCH_PATHS = frozenset({UPSERT_PATH, ARCHIVE_PATH, READ_PATH})
# The window `rateLimitPerSecond` counts in, as the headers report it.
INTERVAL_MS = 1000

# Left out of the mock's /openapi.json, which documents the mock's own API (its errors are
# problem+json): HubSpot's API is documented by HubSpot.
router = APIRouter(prefix=CONTACTS_PATH, tags=["HubSpot face"], include_in_schema=False)


# --- contacts over the store (shared with the Salesforce face) --------------------------


class ContactParts(store.Base):
    """What the faces keep of a record besides the store's columns: its address in parts
    (with the address string they joined to) and the HubSpot id property's name."""

    __tablename__ = "crm_contact_parts"

    crm_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    street: Mapped[str | None] = mapped_column(Text, nullable=True)
    city: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str | None] = mapped_column(Text, nullable=True)
    postal_code: Mapped[str | None] = mapped_column(Text, nullable=True)
    country: Mapped[str | None] = mapped_column(Text, nullable=True)
    joined: Mapped[str] = mapped_column(Text)
    id_property: Mapped[str | None] = mapped_column(String(100), nullable=True)


_PARTS = cast(Table, ContactParts.__table__)
_PARTS_OF = select(ContactParts).where(ContactParts.crm_id.in_(bindparam("ids", expanding=True)))
_DELETE_PARTS = sql_delete(_PARTS).where(_PARTS.c.crm_id.in_(bindparam("ids", expanding=True)))
Record = store.CrmCustomerRecord


def contact_of(record: Record, parts: ContactParts | None) -> Contact:
    """A record as the faces see it (an empty name or email shows as unset)."""
    kept = None if parts is None else {name: getattr(parts, name) for name in rules.ADDRESS_PARTS}
    address = rules.address_parts(record.address, kept, None if parts is None else parts.joined)
    return Contact(
        id=record.id,
        external_id=record.external_id,
        first_name=record.first_name or None,
        last_name=record.last_name or None,
        email=record.email or None,
        phone=record.phone or None,
        created_at=record.created_at,
        updated_at=record.updated_at,
        id_property=None if parts is None else parts.id_property,
        street=address["street"],
        city=address["city"],
        state=address["state"],
        postal_code=address["postal_code"],
        country=address["country"],
    )


async def _parts_of(session: AsyncSession, ids: Sequence[str]) -> dict[str, ContactParts]:
    if not ids:
        return {}
    rows = (await session.execute(_PARTS_OF, {"ids": list(ids)})).scalars().all()
    return {row.crm_id: row for row in rows}


async def contacts_of(session: AsyncSession, records: Sequence[Record]) -> list[Contact]:
    """The records as contacts, in their order (one query for their parts)."""
    parts = await _parts_of(session, [record.id for record in records])
    return [contact_of(record, parts.get(record.id)) for record in records]


async def find_contacts(
    session: AsyncSession, *, external_ids: Sequence[str] = (), crm_ids: Sequence[str] = ()
) -> list[Contact]:
    """The contacts with these external ids, or these CRM ids (unknown ones left out)."""
    statement = select(Record)
    if external_ids:
        statement = statement.where(Record.external_id.in_(list(external_ids)))
    else:
        statement = statement.where(Record.id.in_(list(crm_ids)))
    records = (await session.execute(statement)).scalars().all()
    return await contacts_of(session, records)


async def page_contacts(
    session: AsyncSession,
    *,
    after: str | None,
    limit: int,
    external_ids: Sequence[str] | None = None,
) -> list[Contact]:
    """Up to `limit` contacts in the order of their ids, those after the id `after`,
    optionally only those with these external ids."""
    statement = select(Record).order_by(Record.id).limit(limit)
    if after is not None:
        statement = statement.where(Record.id > after)
    if external_ids is not None:
        statement = statement.where(Record.external_id.in_(list(external_ids)))
    records = (await session.execute(statement)).scalars().all()
    return await contacts_of(session, records)


async def upsert_contacts(
    session: AsyncSession,
    items: Sequence[tuple[str, Mapping[str, str | None], str | None]],
) -> list[tuple[Contact, bool]]:
    """Create or update a contact per `(external id, changes, id property)` (each external
    id at most once): the fields in `changes` (a subset of `hubspot_rules.FIELDS`) change,
    the others keep their value; the contacts after, each with whether it is new. The
    store's record is written by `store.upsert_customers` (its address: the parts joined),
    the parts beside it."""
    if not items:
        return []
    external_ids = [external_id for external_id, _, _ in items]
    known = await store.find_customers_by_external_ids(session, external_ids)
    parts = await _parts_of(session, [record.id for record in known.values()])
    current = {
        external_id: contact_of(record, parts.get(record.id))
        for external_id, record in known.items()
    }
    values = [rules.merged_fields(current.get(ext), changes) for ext, changes, _ in items]
    requests = [
        # Built without validation: the faces check their own rules (a HubSpot contact may
        # have no last name); the store copies the fields.
        CrmCustomerRequest.model_construct(
            external_id=external_id,
            first_name=fields["first_name"] or "",
            last_name=fields["last_name"] or "",
            email=fields["email"] or "",
            phone=fields["phone"],
            address=rules.join_address(fields),
        )
        for (external_id, _, _), fields in zip(items, values, strict=True)
    ]
    applied = await store.upsert_customers(session, requests)
    contacts = []
    for (record, created), fields, (_, _, id_property) in zip(applied, values, items, strict=True):
        row = None if created else parts.get(record.id)
        if row is None:
            row = ContactParts(crm_id=record.id)
            session.add(row)
        for name in rules.ADDRESS_PARTS:
            setattr(row, name, fields[name])
        row.joined = record.address
        if id_property is not None:
            row.id_property = id_property
        contacts.append((contact_of(record, row), created))
    await session.flush()
    return contacts


async def delete_contacts(session: AsyncSession, crm_ids: Sequence[str]) -> set[str]:
    """Delete the records with these CRM ids (and their parts); the ids deleted."""
    if not crm_ids:
        return set()
    gone = await store.delete_customers(session, crm_ids)
    await session.execute(_DELETE_PARTS, {"ids": list(crm_ids)})
    return gone


# --- answers ---------------------------------------------------------------------------


def json_answer(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Answer:
    """A JSON answer the gateway sends itself."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    all_headers = {
        "content-type": "application/json;charset=utf-8",
        "content-length": str(len(raw)),
        **(headers or {}),
    }
    return Answer(status, [(k.encode(), v.encode()) for k, v in all_headers.items()], raw)


def with_headers(answer: Answer, headers: Mapping[str, str]) -> Answer:
    """`answer` with these headers added (replacing any of the same name)."""
    names = {name.lower().encode() for name in headers}
    kept = [(k, v) for k, v in answer.headers if k.lower() not in names]
    added = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Answer(answer.status, kept + added, answer.body, answer.record_statuses)


def seconds_to_utc_midnight(now: datetime) -> int:
    """Whole seconds until the next UTC midnight (at least 1)."""
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


class HubSpotFace:
    """How the gateway answers a HubSpot face call in HubSpot's words (`gateway.Face`)."""

    name = "hubspot"

    def claims(self, path: str) -> bool:
        return path == CONTACTS_PATH or path.startswith(CONTACTS_PATH + "/")

    def per_record(self, call: Call) -> bool:
        return call.method == "POST" and call.path in BATCH_PATHS

    async def subjects(self, runtime: CrmRuntime, call: Call) -> list[Subject]:
        whole = [Subject(None, call.body)]
        if not self.per_record(call):
            return whole
        try:
            inputs = rules.batch_inputs(call.body)
        except Refused:
            return whole
        ids = [rules.stated_id(raw) for raw in inputs]
        if call.path == UPSERT_PATH or (
            call.path == READ_PATH and call.body.get("idProperty") not in (None, "", "hs_object_id")
        ):
            return [Subject(value, raw) for value, raw in zip(ids, inputs, strict=True)]
        known = [value for value in ids if value is not None]
        try:
            async with runtime.sessionmaker() as session, session.begin():
                external_ids = await store.find_external_ids(session, known) if known else {}
        except Exception:
            external_ids = {}
        return [
            Subject(external_ids.get(value) if value else None, raw)
            for value, raw in zip(ids, inputs, strict=True)
        ]

    def fault(self, call: Call, fault: InjectedFault) -> Answer:
        body = rules.error_body(
            f"fault injected: {fault.reason}", rules.category_of(fault.status_code)
        )
        headers = {}
        if fault.retry_after_seconds is not None:
            headers["retry-after"] = str(fault.retry_after_seconds)
        return json_answer(fault.status_code, body, headers)

    def rate_limited(self, call: Call, retry_after_seconds: int) -> Answer:
        body = rules.rate_limit_body(
            "TEN_SECONDLY_ROLLING", "You have reached your secondly limit."
        )
        return json_answer(429, body, {"retry-after": str(retry_after_seconds)})

    def over_daily_limit(self, call: Call, limit: int) -> Answer:
        body = rules.rate_limit_body("DAILY", "You have reached your daily limit.")
        wait = seconds_to_utc_midnight(datetime.now(UTC))
        return json_answer(429, body, {"retry-after": str(wait)})

    def refusal(self, runtime: CrmRuntime, call: Call, scope: Scope) -> Answer | None:
        authorization = call.headers.get("authorization")
        if is_authorized(authorization, runtime.settings.crm_api_token):
            return None
        message = (
            "Authentication credentials not found: send the private app's access token "
            "as `Authorization: Bearer <token>`."
            if not authorization
            else "The access token is not valid for this account."
        )
        return json_answer(401, rules.error_body(message, "INVALID_AUTHENTICATION"))

    def finish(self, runtime: CrmRuntime, call: Call, answer: Answer, usage: Usage) -> Answer:
        second_max = usage.second_limit or NO_LIMIT
        daily_max = usage.daily_limit or NO_LIMIT
        return with_headers(
            answer,
            {
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(INTERVAL_MS),
                "X-HubSpot-RateLimit-Max": str(second_max),
                "X-HubSpot-RateLimit-Remaining": str(max(0, second_max - usage.second_used)),
                "X-HubSpot-RateLimit-Daily": str(daily_max),
                "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, daily_max - usage.daily_used)),
            },
        )


HUBSPOT_FACE = HubSpotFace()


# --- endpoints -------------------------------------------------------------------------


def _refused(refusal: Refused) -> JSONResponse:
    return JSONResponse(refusal.body, status_code=refusal.status)


async def _body(request: Request) -> Any:
    return parse_json_body(await request.body())


def _draws(runtime: CrmRuntime, count: int) -> list[InjectedFault | None]:
    """The fault switch's verdict on each record of a batch, one `errorRate` draw each."""
    return [decide_fault(runtime.faults, runtime.rng.random()) for _ in range(count)]


def _fault_error(fault: InjectedFault, ids: Iterable[str]) -> dict[str, Any]:
    return rules.batch_error(
        f"fault injected: {fault.reason}",
        rules.category_of(fault.status_code),
        ids=list(ids),
        extra={"statusCode": [str(fault.status_code)]},
    )


def _batch_answer(
    started: datetime, results: list[dict[str, Any]], errors: list[dict[str, Any]]
) -> JSONResponse:
    body: dict[str, Any] = {"status": "COMPLETE", "results": results}
    if errors:
        body["numErrors"] = len(errors)
        body["errors"] = errors
    body["startedAt"] = rules.hs_time(started)
    body["completedAt"] = rules.hs_time(store.utc_now())
    return JSONResponse(body, status_code=207 if errors else 200)


@router.post("/batch/upsert")
async def upsert_contacts_batch(
    request: Request, session: SessionDep, runtime: RuntimeDep
) -> Response:
    """Create or update up to 100 contacts by a unique id property (module doc)."""
    started = store.utc_now()
    try:
        planned = rules.plan_upsert(await _body(request))
    except Refused as refusal:
        return _refused(refusal)
    verdicts = _draws(runtime, len(planned))
    accepted = [item for item, fault in zip(planned, verdicts, strict=True) if fault is None]
    applied = await upsert_contacts(
        session, [(item.external_id, item.changes, item.id_property) for item in accepted]
    )
    statuses = [0] * len(planned)
    results = []
    for item, (contact, created) in zip(accepted, applied, strict=True):
        statuses[item.index] = 201 if created else 200
        properties = rules.properties_of(contact, rules.all_properties(contact))
        results.append(rules.public_object(contact, properties, new=created))
    errors = []
    for item, fault in zip(planned, verdicts, strict=True):
        if fault is not None:
            statuses[item.index] = fault.status_code
            errors.append(_fault_error(fault, [item.external_id]))
    report_record_statuses(request, statuses)
    return _batch_answer(started, results, errors)


@router.post("/batch/archive", status_code=204)
async def archive_contacts_batch(
    request: Request, session: SessionDep, runtime: RuntimeDep
) -> Response:
    """Archive (in the mock: delete) up to 100 contacts by HubSpot id; 204, or 207 with the
    ids the `errorRate` drew (module doc)."""
    started = store.utc_now()
    try:
        ids = rules.plan_archive(await _body(request))
    except Refused as refusal:
        return _refused(refusal)
    verdicts = _draws(runtime, len(ids))
    accepted = [crm_id for crm_id, fault in zip(ids, verdicts, strict=True) if fault is None]
    gone = await delete_contacts(session, list(dict.fromkeys(accepted)))
    statuses = []
    errors = []
    deleted: set[str] = set()
    for crm_id, fault in zip(ids, verdicts, strict=True):
        if fault is not None:
            statuses.append(fault.status_code)
            errors.append(_fault_error(fault, [crm_id]))
        elif crm_id in gone and crm_id not in deleted:
            deleted.add(crm_id)
            statuses.append(204)
        else:
            statuses.append(404)
    report_record_statuses(request, statuses)
    if errors:
        return _batch_answer(started, [], errors)
    return Response(status_code=204)


@router.post("/batch/read")
async def read_contacts_batch(
    request: Request, session: SessionDep, runtime: RuntimeDep
) -> Response:
    """Read up to 100 contacts by HubSpot id or by `idProperty`; 207 names those not found
    (`OBJECT_NOT_FOUND`) and those the `errorRate` drew."""
    started = store.utc_now()
    try:
        plan = rules.plan_read(await _body(request))
    except Refused as refusal:
        return _refused(refusal)
    verdicts = _draws(runtime, len(plan.ids))
    wanted = [value for value, fault in zip(plan.ids, verdicts, strict=True) if fault is None]
    if plan.id_property is None:
        found = {c.id: c for c in await find_contacts(session, crm_ids=wanted)} if wanted else {}
    else:
        found = (
            {c.external_id: c for c in await find_contacts(session, external_ids=wanted)}
            if wanted
            else {}
        )
    statuses, results, missing = [], [], []
    errors: list[dict[str, Any]] = []
    for value, fault in zip(plan.ids, verdicts, strict=True):
        contact = found.get(value)
        if fault is not None:
            statuses.append(fault.status_code)
            errors.append(_fault_error(fault, [value]))
        elif contact is None:
            statuses.append(404)
            missing.append(value)
        else:
            statuses.append(200)
            properties = rules.properties_of(contact, plan.properties, id_property=plan.id_property)
            results.append(rules.public_object(contact, properties))
    if missing:
        errors.insert(
            0,
            rules.batch_error(
                "Could not get some CONTACT objects, they may be deleted or not exist. "
                "Check that ids are valid.",
                "OBJECT_NOT_FOUND",
                ids=missing,
            ),
        )
    report_record_statuses(request, statuses)
    return _batch_answer(started, results, errors)


@router.get("")
async def list_contacts(request: Request, session: SessionDep) -> Response:
    """A page of contacts in the order of their ids: `limit` (1 to 100, default 10),
    `after` (the cursor of `paging.next.after`), `properties` (comma-separated or
    repeated; HubSpot's default set when absent), `archived` (the mock keeps none)."""
    query = request.query_params
    raw_limit = query.get("limit", str(rules.DEFAULT_PAGE))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= rules.MAX_PAGE:
        return _refused(
            rules.invalid(
                f"limit must be a whole number from 1 to {rules.MAX_PAGE}, not {raw_limit!r}.",
                context={"limit": [raw_limit]},
            )
        )
    limit = int(raw_limit)
    if query.get("archived", "false").lower() == "true":
        return JSONResponse({"results": []})
    after = query.get("after") or None
    wanted = rules.wanted_properties(query.getlist("properties"))
    contacts = await page_contacts(session, after=after, limit=limit + 1)
    body: dict[str, Any] = {
        "results": [
            rules.public_object(contact, rules.properties_of(contact, wanted))
            for contact in contacts[:limit]
        ]
    }
    if len(contacts) > limit:
        cursor = contacts[limit - 1].id
        link = request.url.include_query_params(after=cursor)
        body["paging"] = {"next": {"after": cursor, "link": str(link)}}
    return JSONResponse(body)
