"""What stands in front of every `/api/crm/customers*` call, as a real CRM's edge would.

For each call, in this order:

1. idempotency: a POST, PUT or DELETE with an `Idempotency-Key` takes the key's lock (repeats
   of one key run one at a time);
2. faults: sleep `latencyMs`, then answer `statusCode` (and `Retry-After`) when the CRM is
   `down` or the call loses the `errorRate` draw, or 429 with `Retry-After` past
   `rateLimitPerSecond` calls in the current second; such a call changes nothing;
3. auth: when `CRM_API_TOKEN` is set, a call without `Authorization: Bearer <token>` gets 401;
4. the first answer again if the key was seen before (nothing changes), else the endpoint
   itself, whose answer is then kept for the key (unless it is a 5xx); the look-up and the
   endpoint's writes share one transaction (the endpoint's session is the gateway's);
5. the request log: every call, whatever happened to it, is appended to `crm_request_log`
   with the status it was answered, before the answer leaves (so a client that has the
   answer also finds the entry); the kept answer is written with it: in the endpoint's own
   transaction when the call ran and succeeded, else in the journal's next group (`journal`).

A batch call (`POST /api/crm/customers/batch`, `.../batch/delete`) goes through the same
steps as a whole (one call, one count against the rate limit, one kept answer), but for
`errorRate`, which the endpoint draws record by record (`batch`). Its log has one entry per
record of a well-formed batch, each with the call's method, path and key, the record's
externalId and own body, and the record's own status when the batch ran, else the call's
(a fault, a refusal, a replayed answer); a body that is no batch at all is one entry, as
for any call.

`FaceCallsGateway` does the same for the faces of real CRMs (`hubspot`, `salesforce`):
delay, fault, rate limit, the optional `dailyLimit`, credentials and the request log (one
entry per record of a batch), each answered in that CRM's own words by its `Face`; no
idempotency keys there.

A pure ASGI middleware rather than dependencies, because it must see the status actually
sent, including the 422 FastAPI answers before any dependency runs.
"""

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any, Protocol
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_mock import batch, store
from crm_mock.batch import BatchKind, Subject
from crm_mock.deps import CALL_RECORD_STATUSES, CALL_SESSION, CrmRuntime, runtime_of
from crm_mock.faults import InjectedFault, RateWindow, decide_fault
from crm_mock.problems import PROBLEM_MEDIA_TYPE, build_problem, problem_bytes
from crm_mock.routes import BATCH_DELETE_PATH, BATCH_PATH, CUSTOMERS_PATH

logger = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"POST", "PUT", "DELETE"})
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# The headers a replayed answer repeats; the length is recomputed, the date is new.
_REPLAYED_HEADERS = ("content-type", "location")
_BATCHES = {("POST", BATCH_PATH): BatchKind.UPSERT, ("POST", BATCH_DELETE_PATH): BatchKind.DELETE}
# The answers of a batch that ran, whose log entries carry each record's own status.
_BATCH_RAN = frozenset({200, 207})


class Ran(Enum):
    """Whether a call's endpoint ran, and whether its trace is committed already."""

    NO = "no"  # a fault, a refusal or a replayed answer
    YES = "yes"
    # ... and its request-log entry and kept answer were committed with its changes
    RECORDED = "recorded"


def is_customer_call(path: str) -> bool:
    """Whether `path` is under `/api/crm/customers` (the only faulted, guarded, logged part)."""
    return path == CUSTOMERS_PATH or path.startswith(CUSTOMERS_PATH + "/")


def crm_id_in_path(path: str) -> str | None:
    """The `{id}` of `/api/crm/customers/{id}`, or None for any other path."""
    rest = path[len(CUSTOMERS_PATH) + 1 :] if path.startswith(CUSTOMERS_PATH + "/") else ""
    return rest if rest and "/" not in rest else None


def is_authorized(authorization: str | None, token: str) -> bool:
    """Whether an `Authorization` header value carries the bearer `token` (always, if unset)."""
    if not token:
        return True
    scheme, _, credentials = (authorization or "").partition(" ")
    # compare_digest: the time taken must not tell how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    )


def parse_json_body(raw: bytes) -> Any:
    """The JSON value of a request body, or None when it is empty or not JSON."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except ValueError:  # also UnicodeDecodeError
        return None


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and PostgreSQL's json type refuses them.
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer, held whole so it can be logged before it is sent."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    # A batch that ran: each record's own status, in the order of the batch.
    record_statuses: tuple[int, ...] | None = None

    @classmethod
    def problem(
        cls, status: int, detail: str, extra_headers: Mapping[str, str] | None = None
    ) -> "Answer":
        """A problem+json answer."""
        body = problem_bytes(build_problem(status, detail))
        headers = {
            "content-type": PROBLEM_MEDIA_TYPE,
            "content-length": str(len(body)),
            **(extra_headers or {}),
        }
        return cls(status, [(k.encode(), v.encode()) for k, v in headers.items()], body)

    @classmethod
    def fault(cls, fault: InjectedFault) -> "Answer":
        """The answer of a call failed on purpose."""
        extra = {}
        if fault.retry_after_seconds is not None:
            extra["retry-after"] = str(fault.retry_after_seconds)
        return cls.problem(fault.status_code, f"fault injected: {fault.reason}", extra)

    @classmethod
    def replay(cls, stored: store.IdempotentAnswer) -> "Answer":
        """The first answer to an idempotency key, again."""
        body = stored.body.encode()
        headers: dict[str, str] = json.loads(stored.headers)
        headers["content-length"] = str(len(body))
        headers["idempotent-replayed"] = "true"
        if stored.status_code in (204, 304):
            del headers["content-length"]
        return cls(stored.status_code, [(k.encode(), v.encode()) for k, v in headers.items()], body)

    def header(self, name: str) -> str | None:
        """The value of a header of this answer, if present."""
        wanted = name.encode()
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == wanted), None)


@dataclass
class Call:
    """What the gateway knows of one incoming call."""

    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, list[str]]
    raw_body: bytes
    received_at: datetime
    body: Any = field(init=False)
    batch: BatchKind | None = field(init=False)

    def __post_init__(self) -> None:
        self.body = parse_json_body(self.raw_body)
        self.batch = _BATCHES.get((self.method, self.path))

    @classmethod
    def from_scope(cls, scope: Scope, raw_body: bytes, received_at: datetime) -> "Call":
        """Read a call from its ASGI scope and body."""
        return cls(
            method=scope["method"],
            path=scope["path"],
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
            raw_body=raw_body,
            received_at=received_at,
        )

    @property
    def idempotency_key(self) -> str | None:
        """The `Idempotency-Key` header; an empty one counts as absent."""
        return self.headers.get("idempotency-key") or None

    def stated_external_id(self) -> str | None:
        """The external id the call names itself: in its body, or (listing) in its query."""
        if isinstance(self.body, dict):
            value = self.body.get("externalId")
            if isinstance(value, str) and value:
                return value
        if self.method == "GET" and self.path == CUSTOMERS_PATH:
            values = self.query.get("externalId")
            return values[0] if values and values[0] else None
        return None


class CustomerCallsGateway:
    """ASGI middleware applying faults, auth, idempotency and the request log (module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_customer_call(scope["path"]):
            await self.app(scope, receive, send)
            return
        received_at = store.utc_now()
        runtime = runtime_of(scope["app"])
        raw_body = await _read_body(receive)
        if raw_body is None:
            return  # the client left before its request was complete: there is nobody to answer
        call = Call.from_scope(scope, raw_body, received_at)
        # Looked up before the call runs: after a DELETE the record is gone.
        if call.batch is None:
            external_id = call.stated_external_id() or await self._external_id_of_record(
                runtime, call
            )
            subjects = [Subject(external_id, call.body)]
        else:
            subjects = await self._batch_subjects(runtime, call)
        with runtime.answering(call.method, call.path):
            answer = await self._answer(runtime, call, scope, receive, subjects)
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
        )
        await send({"type": "http.response.body", "body": answer.body})

    async def _answer(
        self,
        runtime: CrmRuntime,
        call: Call,
        scope: Scope,
        receive: Receive,
        subjects: list[Subject],
    ) -> Answer:
        """The call's answer, once it and its log entries (and kept answer) are recorded."""
        key = call.idempotency_key
        if key is None or call.method not in IDEMPOTENT_METHODS:
            answer, _ = await self._process(
                runtime, call, scope, receive, key=None, subjects=subjects
            )
            await self._record(runtime, call, answer, subjects, kept_for=None)
            return answer
        if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            answer = Answer.problem(
                400, f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
            )
            await self._record(runtime, call, answer, subjects, kept_for=None)
            return answer
        # The lock spans delay, look-up, execution and saving: a repeat that arrives while
        # the first call is still being processed waits for its answer instead of running too.
        async with runtime.idempotency_locks.hold(key):
            answer, ran = await self._process(
                runtime, call, scope, receive, key=key, subjects=subjects
            )
            if ran is not Ran.RECORDED:
                # Only an answer of a call that ran is kept. A 5xx changed nothing (or nobody
                # knows what it did), a fault or a 401 never ran: a retry with the key must
                # run again.
                kept_for = key if ran is Ran.YES and answer.status < 500 else None
                await self._record(runtime, call, answer, subjects, kept_for=kept_for)
            return answer

    async def _process(
        self,
        runtime: CrmRuntime,
        call: Call,
        scope: Scope,
        receive: Receive,
        *,
        key: str | None,
        subjects: list[Subject],
    ) -> tuple[Answer, Ran]:
        """Delay, fault, auth, then replay the answer kept for `key` or run the endpoint;
        whether it ran (`Ran`)."""
        latency_ms = runtime.faults.latency_ms
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        # Decided after the delay, with the switches of that moment: a CRM can go down while
        # a request waits. A batch's records draw for `errorRate` one by one, in the endpoint.
        draw = runtime.rng.random() if call.batch is None else None
        fault = decide_fault(runtime.faults, draw)
        if fault is not None:
            return Answer.fault(fault), Ran.NO
        if not runtime.rate_window.admit(time.time(), runtime.faults.rate_limit_per_second):
            limited = {"retry-after": str(runtime.faults.retry_after_seconds or 1)}
            return Answer.problem(429, "rate limit exceeded: retry later", limited), Ran.NO
        if not is_authorized(call.headers.get("authorization"), runtime.settings.crm_api_token):
            refusal = Answer.problem(
                401, "a valid bearer token is required", {"www-authenticate": "Bearer"}
            )
            return refusal, Ran.NO
        if key is None:
            return await self._execute(call, scope, receive), Ran.YES
        return await self._replay_or_execute(runtime, key, call, scope, receive, subjects)

    async def _replay_or_execute(
        self,
        runtime: CrmRuntime,
        key: str,
        call: Call,
        scope: Scope,
        receive: Receive,
        subjects: list[Subject],
    ) -> tuple[Answer, Ran]:
        """The answer kept for `key`, or the endpoint's, looked up and run in one transaction
        (after the delay: no transaction is held while a call sleeps).

        A call that ran and did not fail, alone (no other call under way, the journal idle),
        commits its request-log entry and kept answer in that same transaction
        (`Ran.RECORDED`): one commit a call instead of two, as calls that arrive one by one
        never share the journal's groups. Otherwise the trace joins the journal's next group
        (cheaper under load).
        """
        async with runtime.sessionmaker() as session:
            stored = await store.find_idempotent_answer(session, key)
            if stored is not None:
                return Answer.replay(stored), Ran.NO
            answer = await self._execute(call, {**scope, CALL_SESSION: session}, receive)
            if answer.status >= 500:
                await session.rollback()
                return answer, Ran.YES
            # Under load the journal's groups are cheaper than a trace per transaction.
            inline = runtime.calls_in_flight == 1 and not runtime.journal.busy
            try:
                if inline:
                    entries, kept = trace_of(call, answer, subjects, kept_for=key)
                    await store.append_request_log_entries(session, entries)
                    await store.keep_idempotent_answers(session, [kept] if kept else [])
                await session.commit()
            except Exception:
                logger.exception("could not commit %s %s", call.method, call.path)
                return Answer.problem(500, "the CRM failed to process the request"), Ran.YES
            return answer, Ran.RECORDED if inline else Ran.YES

    async def _execute(self, call: Call, scope: Scope, receive: Receive) -> Answer:
        """Run the endpoint on the buffered body and capture its whole answer."""
        body_delivered = False

        async def replay_receive() -> Message:
            nonlocal body_delivered
            if not body_delivered:
                body_delivered = True
                return {"type": "http.request", "body": call.raw_body, "more_body": False}
            return await receive()

        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        record_statuses: list[int] = []
        if call.batch is not None:
            scope = {**scope, CALL_RECORD_STATUSES: record_statuses}

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, replay_receive, capture)
        except Exception:
            logger.exception("unhandled error answering %s %s", call.method, call.path)
            return Answer.problem(500, "the CRM failed to process the request")
        return Answer(status, headers, b"".join(chunks), tuple(record_statuses) or None)

    async def _batch_subjects(self, runtime: CrmRuntime, call: Call) -> list[Subject]:
        """What a batch call's log entries name: one subject per record of a well-formed
        batch (a delete's records looked up before the call runs), else the call itself."""
        whole = [Subject(None, call.body)]
        if call.batch is BatchKind.UPSERT:
            return batch.upsert_subjects(call.body) or whole
        ids = batch.delete_ids(call.body)
        if ids is None:
            return whole
        try:
            async with runtime.sessionmaker() as session, session.begin():
                external_ids = await store.find_external_ids(session, ids)
        except Exception:
            logger.exception("could not look up the external ids of a batch delete")
            external_ids = {}
        return batch.delete_subjects(ids, external_ids)

    async def _external_id_of_record(self, runtime: CrmRuntime, call: Call) -> str | None:
        crm_id = crm_id_in_path(call.path)
        if crm_id is None:
            return None
        try:
            async with runtime.sessionmaker() as session, session.begin():
                return await store.find_external_id(session, crm_id)
        except Exception:
            logger.exception("could not look up the external id of %s", crm_id)
            return None

    async def _record(
        self,
        runtime: CrmRuntime,
        call: Call,
        answer: Answer,
        subjects: list[Subject],
        *,
        kept_for: str | None,
    ) -> None:
        """Log the call, and keep its answer for the key `kept_for`, in the journal's next
        group; returns once both are committed."""
        entries, kept = trace_of(call, answer, subjects, kept_for=kept_for)
        try:
            await runtime.journal.record(entries, kept)
        except Exception:
            # The caller's answer matters more than the log; say loudly that an entry is
            # missing. The change itself is committed: a retry without the kept answer meets
            # the record (409) or its absence (404) instead, which a client handles anyway.
            logger.exception(
                "could not log %s %s (status %s)", call.method, call.path, answer.status
            )


def trace_of(
    call: Call, answer: Answer, subjects: list[Subject], *, kept_for: str | None
) -> tuple[list[store.RequestLogEntry], store.IdempotentAnswer | None]:
    """What a call leaves behind: its request-log entries (one per subject: the call, or
    each record of a batch), and its answer kept for the key `kept_for` (none without one).
    """
    kept = None
    if kept_for is not None:
        headers = {name: value for name in _REPLAYED_HEADERS if (value := answer.header(name))}
        kept = store.IdempotentAnswer(
            key=kept_for,
            method=call.method,
            path=call.path,
            status_code=answer.status,
            headers=json.dumps(headers),
            body=answer.body.decode("utf-8", errors="replace"),
            created_at=store.utc_now(),
        )
    statuses = answer.record_statuses
    if statuses is None or len(statuses) != len(subjects) or answer.status not in _BATCH_RAN:
        statuses = (answer.status,) * len(subjects)
    entries = [
        store.RequestLogEntry(
            method=call.method,
            path=call.path,
            status=status,
            external_id=subject.external_id,
            idempotency_key=call.idempotency_key,
            body=subject.body,
            received_at=call.received_at,
        )
        for subject, status in zip(subjects, statuses, strict=True)
    ]
    return entries, kept


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


# --- the faces of real CRMs --------------------------------------------------------------

# What the rate-limit headers of a face report while no limit is set.
NO_LIMIT = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    """A face's quotas after a call: calls admitted in the current second and UTC day, and
    the limits in force (None: none set)."""

    second_limit: int | None
    second_used: int
    daily_limit: int | None
    daily_used: int


@dataclass(slots=True)
class DailyWindow:
    """The calls a face admitted in the current UTC day, for the `dailyLimit` fault field.

    The count starts again at UTC midnight and whenever `dailyLimit` changes (a new quota is
    a new day's), so a test that sets a limit knows how many calls remain.
    """

    day: int = -1
    limit: int | None = None
    count: int = 0

    def admit(self, now: float, limit: int | None) -> bool:
        """Count a call at `now` (seconds) and say whether it is within `limit` calls in its
        day; a refused call is not counted."""
        day = int(now // 86_400)
        if day != self.day or limit != self.limit:
            self.day, self.limit, self.count = day, limit, 0
        if limit is not None and self.count >= limit:
            return False
        self.count += 1
        return True

    def used(self, now: float, limit: int | None) -> int:
        """The calls admitted in the day of `now` under `limit`: none once the day, or the
        limit, is no longer the one counted (the next call starts counting again)."""
        return self.count if (int(now // 86_400), limit) == (self.day, self.limit) else 0


class Face(Protocol):
    """The face of a real CRM's API (HubSpot's, Salesforce's) over the mock's store: what
    the gateway asks of it to answer faults, limits and refusals in that CRM's own words,
    and to log each record of a call."""

    name: str

    def claims(self, path: str) -> bool:
        """Whether a call to `path` is this face's."""

    def per_record(self, call: Call) -> bool:
        """Whether the call's endpoint draws `errorRate` record by record (a batch)."""

    async def subjects(self, runtime: CrmRuntime, call: Call) -> list[Subject]:
        """What the call's request-log entries name, looked up before it runs: one subject
        per record of a well-formed batch, else one for the call."""

    def fault(self, call: Call, fault: InjectedFault) -> Answer:
        """The answer of a call that the fault switch fails (`down`, or an `errorRate`
        draw of a call that is no batch)."""

    def rate_limited(self, call: Call, retry_after_seconds: int) -> Answer:
        """The answer of a call past `rateLimitPerSecond`."""

    def over_daily_limit(self, call: Call, limit: int) -> Answer:
        """The answer of a call past the face's `dailyLimit` calls of the day."""

    def refusal(self, runtime: CrmRuntime, call: Call, scope: Scope) -> Answer | None:
        """The answer to a call whose credentials the face refuses, or None to run it."""

    def finish(self, runtime: CrmRuntime, call: Call, answer: Answer, usage: Usage) -> Answer:
        """The answer as sent (e.g. with the CRM's rate-limit headers)."""


class FaceCallsGateway(CustomerCallsGateway):
    """The gateway of the faces of real CRMs: the same steps as for `/api/crm/customers*`
    (delay, fault, rate limit, auth, request log), in each CRM's own words, plus the
    `dailyLimit` fault field; no `Idempotency-Key` (neither CRM has one for these calls).

    A batch call's records draw for `errorRate` one by one in the endpoint, which reports
    each record's status for its log entry (`deps.report_record_statuses`); a call that
    did not run, or that ran but reported none, logs the call's status for each subject.
    """

    def __init__(self, app: ASGIApp, faces: Sequence[Face] = ()) -> None:
        super().__init__(app)
        self.faces = tuple(faces)
        self._daily: dict[str, DailyWindow] = {}
        # Calls admitted this second while no rate limit is set (for the headers only).
        self._second = RateWindow()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        face = (
            next((face for face in self.faces if face.claims(scope["path"])), None)
            if scope["type"] == "http"
            else None
        )
        if face is None:
            await self.app(scope, receive, send)
            return
        received_at = store.utc_now()
        runtime = runtime_of(scope["app"])
        raw_body = await _read_body(receive)
        if raw_body is None:
            return
        call = Call.from_scope(scope, raw_body, received_at)
        subjects = await face.subjects(runtime, call)
        with runtime.answering(call.method, call.path):
            answer, ran = await self._face_answer(runtime, face, call, scope, receive)
        answer = face.finish(runtime, call, answer, self._usage(runtime, face))
        entries = face_log_entries(call, answer, subjects, ran=ran)
        try:
            await runtime.journal.record(entries)
        except Exception:
            logger.exception(
                "could not log %s %s (status %s)", call.method, call.path, answer.status
            )
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
        )
        await send({"type": "http.response.body", "body": answer.body})

    async def _face_answer(
        self, runtime: CrmRuntime, face: Face, call: Call, scope: Scope, receive: Receive
    ) -> tuple[Answer, bool]:
        """Delay, fault, limits, credentials, then the endpoint; whether it ran."""
        faults = runtime.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
            faults = runtime.faults  # the switches of the moment the call is decided
        draw = None if face.per_record(call) else runtime.rng.random()
        fault = decide_fault(faults, draw)
        if fault is not None:
            return face.fault(call, fault), False
        now = time.time()
        if not runtime.rate_window.admit(now, faults.rate_limit_per_second):
            return face.rate_limited(call, faults.retry_after_seconds or 1), False
        self._second.admit(now, NO_LIMIT)
        daily = self._daily.setdefault(face.name, DailyWindow())
        if not daily.admit(now, faults.daily_limit):
            return face.over_daily_limit(call, faults.daily_limit or 0), False
        refusal = face.refusal(runtime, call, scope)
        if refusal is not None:
            return refusal, False
        statuses: list[int] = []
        answer = await self._execute(call, {**scope, CALL_RECORD_STATUSES: statuses}, receive)
        return replace(answer, record_statuses=tuple(statuses) or None), True

    def _usage(self, runtime: CrmRuntime, face: Face) -> Usage:
        limit = runtime.faults.rate_limit_per_second
        window = runtime.rate_window if limit is not None else self._second
        daily = self._daily.get(face.name, DailyWindow())
        now = time.time()
        return Usage(
            second_limit=limit,
            second_used=window.used(now),
            daily_limit=runtime.faults.daily_limit,
            daily_used=daily.used(now, runtime.faults.daily_limit),
        )


def face_log_entries(
    call: Call, answer: Answer, subjects: list[Subject], *, ran: bool
) -> list[store.RequestLogEntry]:
    """A face call's request-log entries: one per subject, with the record's own status
    when the endpoint ran and reported one per subject, else the call's."""
    statuses = answer.record_statuses
    if not ran or statuses is None or len(statuses) != len(subjects):
        statuses = (answer.status,) * len(subjects)
    return [
        store.RequestLogEntry(
            method=call.method,
            path=call.path,
            status=status,
            external_id=subject.external_id,
            idempotency_key=None,
            body=subject.body,
            received_at=call.received_at,
        )
        for subject, status in zip(subjects, statuses, strict=True)
    ]
