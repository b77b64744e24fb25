"""The CRM mock's Salesforce face: the token, sObject Collections and query endpoints the
Salesforce connector uses (SPEC section 4b), over the mock's own store, fault switch,
request log and `CRM_API_TOKEN` (README: "The CRM mock's Salesforce face").

- `POST /services/oauth2/token` (`grant_type=client_credentials`, `client_id`,
  `client_secret`, as form fields or HTTP Basic): `access_token`, `instance_url` (the
  mock's own base URL, as the client reached it), `id`, `token_type`, `issued_at`,
  `signature`. While `CRM_API_TOKEN` is set, the client secret must be it (else 400
  `invalid_client`); unset, any client is let in, as the rest of the mock is open.
- `PATCH /services/data/vXX.X/composite/sobjects/Contact/{externalIdField}`
  `{"allOrNone", "records": [{"attributes": {"type": "Contact"}, ...}]}`, up to 200: one
  result per record, in order (`id`, `success`, `errors`, `created`). A record the
  fault switch's `errorRate` draws fails with `UNABLE_TO_LOCK_ROW`; the rules of
  `salesforce_rules.plan_upserts` refuse others (`REQUIRED_FIELD_MISSING` for a new
  contact without a last name, `INVALID_EMAIL_ADDRESS`, `STRING_TOO_LONG`, ...). An update
  changes only the fields sent. `allOrNone: true` applies none when one fails.
- `DELETE /services/data/vXX.X/composite/sobjects?ids=...&allOrNone=false`: up to 200
  ids, one result each; an id no record has fails with `ENTITY_IS_DELETED` (the mock
  keeps no recycle bin: an unknown id was, as far as a client can tell, deleted).
- `GET /services/data/vXX.X/query?q=SELECT ... FROM Contact ...` (the simple SOQL of
  `salesforce_rules.parse_soql`): `totalSize`, `done`, `records`, and `nextRecordsUrl`
  (`GET .../query/{locator}`) while more follow; pages of 2000 records, or the
  `batchSize` of an `Sforce-Query-Options` header (200 to 2000). Records come in the order
  of their Ids. A query locator lives in the process (the last 1000 are kept).
- `PATCH`/`GET /services/data/vXX.X/sobjects/Contact/{externalIdField}/{value}` (one
  record by external id: 201 `{id, success, errors, created}` when created, 204 when
  updated), `GET`/`DELETE .../sobjects/Contact/{Id}`.

Salesforce Ids are the store's own CRM ids (`crm_...`, not Salesforce's 18 characters: a
client only hands them back). Every custom field (`..__c`) reads and writes the record's
external id, so the connector's `SALESFORCE_EXTERNAL_ID_FIELD` may be any. The mailing
address parts are kept beside the record as for the HubSpot face (`crm_mock.hubspot`:
`crm_contact_parts`).

Faults, limits and credentials come from `gateway.FaceCallsGateway`, answered here in
Salesforce's words (`SalesforceFace`): `down` and a drawn call answer `statusCode` with
a Salesforce error list (`SERVER_UNAVAILABLE` for a 5xx); past `rateLimitPerSecond`, and
past the optional `dailyLimit` (calls of this face per UTC day), 403
`REQUEST_LIMIT_EXCEEDED` with `Retry-After` (Salesforce's REST API answers 403, not 429,
for its limits); every answer carries `Sforce-Limit-Info: api-usage=<used>/<limit>`.
Tokens: a token this process issued and then expired, and, while `CRM_API_TOKEN` is set,
any token it did not issue, answer 401 `INVALID_SESSION_ID`. Tokens live in the process
(a restart forgets them, as a revoked session) until `POST
/api/crm/_salesforce/expire-tokens` expires every one issued so far (a control for tests,
never faulted). Each record of a collection is its own entry of `GET /api/crm/_requests`.

Salesforce's own pages read for this: see `crm_mock.salesforce_rules`.
"""

import base64
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.applications import Starlette
from starlette.types import Scope

from crm_mock import salesforce_rules as rules
from crm_mock import store
from crm_mock.batch import Subject
from crm_mock.deps import CrmRuntime, RuntimeDep, SessionDep, report_record_statuses
from crm_mock.faults import InjectedFault, decide_fault
from crm_mock.gateway import NO_LIMIT, Answer, Call, Usage, parse_json_body
from crm_mock.hubspot import (
    delete_contacts,
    find_contacts,
    json_answer,
    page_contacts,
    seconds_to_utc_midnight,
    upsert_contacts,
    with_headers,
)
from crm_mock.hubspot_rules import Contact, merged_fields
from crm_mock.salesforce_rules import RecordError, Refused

TOKEN_PATH = "/services/oauth2/token"
DATA_PREFIX = "/services/data/"
EXPIRE_PATH = "/api/crm/_salesforce/expire-tokens"
# The organisation and user the mock's tokens stand for.
ORG_ID = "00D000000000001AAA"
USER_ID = "005000000000001AAA"
KEPT_CURSORS = 1000
KEPT_TOKENS = 10_000

# Left out of the mock's /openapi.json (which documents the mock's own API): Salesforce's
# API is documented by Salesforce.
router = APIRouter(tags=["Salesforce face"], include_in_schema=False)
admin_router = APIRouter(tags=["test controls"], include_in_schema=False)

Version = Annotated[str, Path(description="The API version, such as v62.0")]


@dataclass
class Cursor:
    """Where a query stands: what it asks, its page size, the last Id sent, how many
    records were sent and will be in all."""

    query: rules.Soql
    batch_size: int
    last_id: str | None
    sent: int
    total: int


@dataclass
class SalesforceState:
    """The face's memory, kept in the process: tokens issued (and those expired), and the
    cursors of queries not yet read to the end."""

    tokens: OrderedDict[str, float] = field(default_factory=OrderedDict)
    expired: set[str] = field(default_factory=set)
    cursors: OrderedDict[str, Cursor] = field(default_factory=OrderedDict)

    def issue(self) -> str:
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        self.tokens[token] = time.time()
        while len(self.tokens) > KEPT_TOKENS:
            self.tokens.popitem(last=False)
        return token

    def expire_all(self) -> int:
        count = len(self.tokens)
        self.expired.update(self.tokens)
        self.tokens.clear()
        return count

    def keep_cursor(self, cursor: Cursor) -> str:
        locator = "01g" + secrets.token_hex(8)
        self.cursors[locator] = cursor
        while len(self.cursors) > KEPT_CURSORS:
            self.cursors.popitem(last=False)
        return locator


def state_of(app: Starlette) -> SalesforceState:
    """The face's state on a running app (made on first use)."""
    state = getattr(app.state, "salesforce", None)
    if not isinstance(state, SalesforceState):
        state = SalesforceState()
        app.state.salesforce = state
    return state


# --- the gateway's side ----------------------------------------------------------------


def _path_parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def collection_external_id_field(path: str) -> str | None:
    """The external id field of a collections upsert path, or None for any other path."""
    parts = _path_parts(path)
    # services, data, vXX.X, composite, sobjects, Contact, <field>
    if len(parts) == 7 and parts[3:5] == ["composite", "sobjects"]:
        return parts[6]
    return None


def is_collection_delete(call: Call) -> bool:
    parts = _path_parts(call.path)
    return call.method == "DELETE" and len(parts) == 5 and parts[3:5] == ["composite", "sobjects"]


def sf_answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Answer:
    return json_answer(status, body, headers)


def _form(raw: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(raw.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}
    return {name: values[0] for name, values in fields.items()}


class SalesforceFace:
    """How the gateway answers a Salesforce face call in Salesforce's words
    (`gateway.Face`)."""

    name = "salesforce"

    def claims(self, path: str) -> bool:
        return path == TOKEN_PATH or path.startswith(DATA_PREFIX)

    def per_record(self, call: Call) -> bool:
        return (
            call.method == "PATCH" and collection_external_id_field(call.path) is not None
        ) or is_collection_delete(call)

    async def subjects(self, runtime: CrmRuntime, call: Call) -> list[Subject]:
        if call.path == TOKEN_PATH:
            form = _form(call.raw_body)
            shown = {k: form[k] for k in ("grant_type", "client_id") if k in form}
            return [Subject(None, shown or None)]
        whole = [Subject(None, call.body)]
        external_id_field = collection_external_id_field(call.path)
        if call.method == "PATCH" and external_id_field is not None:
            try:
                records, _ = rules.collection_records(call.body)
            except Refused:
                return whole
            return [Subject(_stated(record, external_id_field), record) for record in records]
        if is_collection_delete(call):
            ids = _ids(call.query.get("ids", []))
            if not ids or len(ids) > rules.MAX_RECORDS:
                return whole
            try:
                async with runtime.sessionmaker() as session, session.begin():
                    external_ids = await store.find_external_ids(session, ids)
            except Exception:
                external_ids = {}
            return [Subject(external_ids.get(crm_id), {"id": crm_id}) for crm_id in ids]
        parts = _path_parts(call.path)
        if call.method == "PATCH" and len(parts) == 7 and parts[3] == "sobjects":
            return [Subject(parts[6], call.body)]
        return whole

    def fault(self, call: Call, fault: InjectedFault) -> Answer:
        headers = {}
        if fault.retry_after_seconds is not None:
            headers["retry-after"] = str(fault.retry_after_seconds)
        message = f"fault injected: {fault.reason}"
        if call.path == TOKEN_PATH:
            return sf_answer(
                fault.status_code, rules.oauth_error("temporarily_unavailable", message), headers
            )
        code = "SERVER_UNAVAILABLE" if fault.status_code >= 500 else "REQUEST_REFUSED"
        return sf_answer(fault.status_code, rules.errors(message, code), headers)

    def rate_limited(self, call: Call, retry_after_seconds: int) -> Answer:
        body = rules.errors(
            "ConcurrentRequests Limit exceeded: too many calls this second.",
            "REQUEST_LIMIT_EXCEEDED",
        )
        return sf_answer(403, body, {"retry-after": str(retry_after_seconds)})

    def over_daily_limit(self, call: Call, limit: int) -> Answer:
        body = rules.errors(
            f"TotalRequests Limit exceeded: {limit} calls a day.", "REQUEST_LIMIT_EXCEEDED"
        )
        wait = seconds_to_utc_midnight(datetime.now(UTC))
        return sf_answer(403, body, {"retry-after": str(wait)})

    def refusal(self, runtime: CrmRuntime, call: Call, scope: Scope) -> Answer | None:
        if call.path == TOKEN_PATH:
            return None  # the token endpoint checks the client itself
        state = state_of(scope["app"])
        scheme, _, token = (call.headers.get("authorization") or "").partition(" ")
        token = token.strip() if scheme.lower() in ("bearer", "oauth") else ""
        if token in state.tokens:
            return None
        if token not in state.expired and not runtime.settings.crm_api_token:
            return None
        body = rules.errors("Session expired or invalid", "INVALID_SESSION_ID")
        return sf_answer(401, body, {"www-authenticate": "Token"})

    def finish(self, runtime: CrmRuntime, call: Call, answer: Answer, usage: Usage) -> Answer:
        limit = usage.daily_limit or NO_LIMIT
        return with_headers(answer, {"Sforce-Limit-Info": f"api-usage={usage.daily_used}/{limit}"})


SALESFORCE_FACE = SalesforceFace()


def _stated(record: Any, external_id_field: str) -> str | None:
    """The external id a record names, if it names one."""
    if not isinstance(record, dict):
        return None
    for name, value in record.items():
        if name.lower() == external_id_field.lower() and isinstance(value, str | int):
            return str(value) or None
    return None


def _ids(values: Sequence[str]) -> list[str]:
    return [crm_id.strip() for value in values for crm_id in value.split(",") if crm_id.strip()]


# --- endpoints -------------------------------------------------------------------------


def _refused(refusal: Refused) -> JSONResponse:
    return JSONResponse(refusal.body, status_code=refusal.status)


def _not_found() -> JSONResponse:
    return JSONResponse(
        rules.errors("The requested resource does not exist", "NOT_FOUND"), status_code=404
    )


def _check_path(version: str, sobject: str | None = None) -> JSONResponse | None:
    if not rules.is_version(version):
        return _not_found()
    if sobject is not None and sobject != rules.SOBJECT:
        return _not_found()
    return None


@router.post(TOKEN_PATH)
async def issue_token(request: Request, runtime: RuntimeDep) -> Response:
    """OAuth 2.0 client credentials: a token for the mock's Salesforce face (module doc)."""
    form = _form(await request.body())
    client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    scheme, _, basic = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "basic" and not client_id:
        try:
            client_id, _, secret = base64.b64decode(basic.strip()).decode().partition(":")
        except ValueError:
            client_id, secret = "", ""
    grant_type = form.get("grant_type")
    if grant_type != "client_credentials":
        error = rules.oauth_error("unsupported_grant_type", "grant type not supported")
        return JSONResponse(error, status_code=400)
    if not client_id:
        error = rules.oauth_error("invalid_client_id", "client identifier invalid")
        return JSONResponse(error, status_code=400)
    expected = runtime.settings.crm_api_token
    if expected and not secrets.compare_digest(secret.encode(), expected.encode()):
        error = rules.oauth_error("invalid_client", "invalid client credentials")
        return JSONResponse(error, status_code=400)
    instance_url = str(request.base_url).rstrip("/")
    identity_url = f"{instance_url}/id/{ORG_ID}/{USER_ID}"
    issued_at = str(int(time.time() * 1000))
    return JSONResponse(
        {
            "access_token": state_of(request.app).issue(),
            "signature": rules.token_signature(secret or client_id, identity_url, issued_at),
            "scope": "api",
            "instance_url": instance_url,
            "id": identity_url,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }
    )


@admin_router.post(EXPIRE_PATH)
async def expire_tokens(request: Request) -> dict[str, int]:
    """Expire every token the Salesforce face issued so far: each answers 401
    `INVALID_SESSION_ID` from now on (a control for tests)."""
    return {"expired": state_of(request.app).expire_all()}


def _draws(runtime: CrmRuntime, count: int) -> list[InjectedFault | None]:
    return [decide_fault(runtime.faults, runtime.rng.random()) for _ in range(count)]


async def _apply_upserts(
    session: AsyncSession,
    runtime: CrmRuntime,
    planned: list[rules.UpsertRecord],
    all_or_none: bool,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Apply the records that pass (module doc): their results and log statuses, in order."""
    verdicts = _draws(runtime, len(planned))
    errors: dict[int, RecordError] = {}
    for item, fault in zip(planned, verdicts, strict=True):
        if fault is not None:
            errors[item.index] = rules.lock_error(f"fault injected: {fault.reason}")
        elif item.error is not None:
            errors[item.index] = item.error
    candidates = [item for item in planned if item.index not in errors]
    known_ids = [item.external_id for item in candidates if item.external_id is not None]
    known = (
        {c.external_id: c for c in await find_contacts(session, external_ids=known_ids)}
        if known_ids
        else {}
    )
    for item in candidates:
        after = merged_fields(known.get(item.external_id or ""), item.changes)
        if after["last_name"] is None:
            errors[item.index] = rules.missing_last_name()
    accepted = [item for item in candidates if item.index not in errors]
    if all_or_none and errors:
        accepted = []
    applied = await upsert_contacts(
        session, [(item.external_id or "", item.changes, None) for item in accepted]
    )
    outcome = {item.index: pair for item, pair in zip(accepted, applied, strict=True)}
    results, statuses = [], []
    for item, fault in zip(planned, verdicts, strict=True):
        if item.index in outcome:
            contact, created = outcome[item.index]
            results.append(rules.result(contact.id, created=created))
            statuses.append(201 if created else 200)
        elif item.index in errors:
            results.append(rules.result(None, error=errors[item.index]))
            statuses.append(fault.status_code if fault is not None else 400)
        else:
            results.append(rules.result(None, error=rules.rolled_back()))
            statuses.append(400)
    return results, statuses


@router.patch("/services/data/{version}/composite/sobjects/{sobject}/{external_id_field}")
async def upsert_collection(
    version: Version,
    sobject: str,
    external_id_field: str,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
) -> Response:
    """Upsert up to 200 Contacts by an external id field (module doc)."""
    if (wrong := _check_path(version, sobject)) is not None:
        return wrong
    if not rules.is_external_id_field(external_id_field):
        return _refused(
            rules.bad_request(
                f"{external_id_field} is not an external id field of {rules.SOBJECT}.",
                "INVALID_FIELD",
            )
        )
    try:
        records, all_or_none = rules.collection_records(parse_json_body(await request.body()))
        planned = rules.plan_upserts(records, external_id_field)
    except Refused as refusal:
        return _refused(refusal)
    results, statuses = await _apply_upserts(session, runtime, planned, all_or_none)
    report_record_statuses(request, statuses)
    return JSONResponse(results)


@router.delete("/services/data/{version}/composite/sobjects")
async def delete_collection(
    version: Version, request: Request, session: SessionDep, runtime: RuntimeDep
) -> Response:
    """Delete up to 200 Contacts by Id: one result each, in order (module doc)."""
    if (wrong := _check_path(version)) is not None:
        return wrong
    ids = _ids(request.query_params.getlist("ids"))
    all_or_none = request.query_params.get("allOrNone", "false").lower() == "true"
    if not ids:
        return _refused(rules.bad_request("ids: at least one Id is required", "MISSING_ARGUMENT"))
    if len(ids) > rules.MAX_RECORDS:
        return _refused(
            rules.bad_request(
                f"record limit reached. cannot submit more than {rules.MAX_RECORDS} records "
                "into this call",
                "EXCEEDED_ID_LIMIT",
            )
        )
    verdicts = _draws(runtime, len(ids))
    wanted = [crm_id for crm_id, fault in zip(ids, verdicts, strict=True) if fault is None]
    existing = {c.id for c in await find_contacts(session, crm_ids=wanted)} if wanted else set()
    errors: dict[int, RecordError] = {}
    seen: set[str] = set()
    for index, (crm_id, fault) in enumerate(zip(ids, verdicts, strict=True)):
        if fault is not None:
            errors[index] = rules.lock_error(f"fault injected: {fault.reason}")
        elif crm_id not in existing or crm_id in seen:
            errors[index] = RecordError("ENTITY_IS_DELETED", "entity is deleted")
        seen.add(crm_id)
    doomed = [crm_id for index, crm_id in enumerate(ids) if index not in errors]
    if all_or_none and errors:
        doomed = []
    await delete_contacts(session, doomed)
    results, statuses = [], []
    for index, (crm_id, fault) in enumerate(zip(ids, verdicts, strict=True)):
        if index in errors:
            error = errors[index]
            results.append(rules.result(crm_id, error=error))
            if fault is not None:
                statuses.append(fault.status_code)
            else:
                statuses.append(404 if error.status_code == "ENTITY_IS_DELETED" else 400)
        elif crm_id in doomed:
            results.append(rules.result(crm_id))
            statuses.append(204)
        else:
            results.append(rules.result(crm_id, error=rules.rolled_back()))
            statuses.append(400)
    for result in results:
        del result["created"]
    report_record_statuses(request, statuses)
    return JSONResponse(results)


async def _query_page(
    session: AsyncSession, state: SalesforceState, cursor: Cursor, version: str
) -> dict[str, Any]:
    query = cursor.query
    remaining = cursor.total - cursor.sent
    size = min(cursor.batch_size, remaining)
    contacts = await _select(session, query, after=cursor.last_id, limit=size) if size else []
    cursor.sent += len(contacts)
    if contacts:
        cursor.last_id = contacts[-1].id
    body: dict[str, Any] = {"totalSize": cursor.total, "done": cursor.sent >= cursor.total}
    if not body["done"]:
        locator = state.keep_cursor(cursor)
        body["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}-{cursor.sent}"
    body["records"] = [rules.sobject(contact, query.fields, version) for contact in contacts]
    return body


async def _select(
    session: AsyncSession, query: rules.Soql, *, after: str | None, limit: int
) -> list[Contact]:
    if query.filter_field is None:
        return await page_contacts(session, after=after, limit=limit)
    if query.filter_field == "Id":
        found = await find_contacts(session, crm_ids=query.values)
    else:
        found = await find_contacts(session, external_ids=query.values)
    ordered = sorted(found, key=lambda contact: contact.id)
    return [c for c in ordered if after is None or c.id > after][:limit]


async def _count(session: AsyncSession, query: rules.Soql) -> int:
    record = store.CrmCustomerRecord
    statement = select(func.count()).select_from(record)
    if query.filter_field == "Id":
        statement = statement.where(record.id.in_(list(query.values)))
    elif query.filter_field is not None:
        statement = statement.where(record.external_id.in_(list(query.values)))
    total: int = (await session.execute(statement)).scalar_one()
    return total if query.limit is None else min(total, query.limit)


@router.get("/services/data/{version}/query")
@router.get("/services/data/{version}/query/")
async def query(version: Version, request: Request, session: SessionDep) -> Response:
    """Run the simple SOQL of `q` (module doc); the first page."""
    if (wrong := _check_path(version)) is not None:
        return wrong
    try:
        soql = rules.parse_soql(request.query_params.get("q", ""))
    except Refused as refusal:
        return _refused(refusal)
    size = rules.batch_size(request.headers.get("sforce-query-options"))
    cursor = Cursor(soql, size, None, 0, await _count(session, soql))
    return JSONResponse(await _query_page(session, state_of(request.app), cursor, version))


@router.get("/services/data/{version}/query/{locator}")
async def query_more(
    version: Version, locator: str, request: Request, session: SessionDep
) -> Response:
    """The next page of a query, by the `nextRecordsUrl` of the page before."""
    if (wrong := _check_path(version)) is not None:
        return wrong
    state = state_of(request.app)
    key, _, offset = locator.partition("-")
    cursor = state.cursors.pop(key, None)
    if cursor is None or offset != str(cursor.sent):
        body = rules.errors("invalid query locator", "INVALID_QUERY_LOCATOR")
        return JSONResponse(body, status_code=400)
    return JSONResponse(await _query_page(session, state, cursor, version))


@router.patch("/services/data/{version}/sobjects/{sobject}/{external_id_field}/{value}")
async def upsert_one(
    version: Version,
    sobject: str,
    external_id_field: str,
    value: str,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
) -> Response:
    """Create or update one Contact by external id: 201 with its result when created, 204
    when updated; 400 with the error list when refused."""
    if (wrong := _check_path(version, sobject)) is not None:
        return wrong
    body = parse_json_body(await request.body())
    if not rules.is_external_id_field(external_id_field) or not isinstance(body, dict):
        return _refused(
            rules.bad_request("The body must be a Contact's fields.", "JSON_PARSER_ERROR")
        )
    try:
        planned = rules.plan_record(0, {**body, external_id_field: value}, external_id_field)
    except Refused as refusal:
        return _refused(refusal)
    found = await find_contacts(session, external_ids=[value])
    contact = found[0] if found else None
    error = planned.error
    if error is None and merged_fields(contact, planned.changes)["last_name"] is None:
        error = rules.missing_last_name()
    if error is not None:
        return JSONResponse(
            rules.errors(error.message, error.status_code, error.fields), status_code=400
        )
    [(written, created)] = await upsert_contacts(session, [(value, planned.changes, None)])
    if not created:
        return Response(status_code=204)
    return JSONResponse(rules.result(written.id, created=True), status_code=201)


def _all_fields(external_id_field: str) -> list[str]:
    return ["Id", *rules.FIELD_MAP, external_id_field, "CreatedDate", "LastModifiedDate"]


@router.get("/services/data/{version}/sobjects/{sobject}/{external_id_field}/{value}")
async def get_by_external_id(
    version: Version, sobject: str, external_id_field: str, value: str, session: SessionDep
) -> Response:
    """One Contact by external id, or 404."""
    if (wrong := _check_path(version, sobject)) is not None:
        return wrong
    found = await find_contacts(session, external_ids=[value])
    if not found or not rules.is_external_id_field(external_id_field):
        return _not_found()
    return JSONResponse(rules.sobject(found[0], _all_fields(external_id_field), version))


@router.get("/services/data/{version}/sobjects/{sobject}/{record_id}")
async def get_by_id(
    version: Version, sobject: str, record_id: str, session: SessionDep
) -> Response:
    """One Contact by Id, or 404."""
    if (wrong := _check_path(version, sobject)) is not None:
        return wrong
    found = await find_contacts(session, crm_ids=[record_id])
    if not found:
        return _not_found()
    return JSONResponse(
        rules.sobject(found[0], _all_fields(rules.DEFAULT_EXTERNAL_ID_FIELD), version)
    )


@router.delete("/services/data/{version}/sobjects/{sobject}/{record_id}")
async def delete_one(
    version: Version, sobject: str, record_id: str, session: SessionDep
) -> Response:
    """Delete one Contact by Id: 204, or 404 `ENTITY_IS_DELETED`."""
    if (wrong := _check_path(version, sobject)) is not None:
        return wrong
    if not await delete_contacts(session, [record_id]):
        return JSONResponse(rules.errors("entity is deleted", "ENTITY_IS_DELETED"), status_code=404)
    return Response(status_code=204)
