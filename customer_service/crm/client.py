"""The CRM client: one aiohttp session for the process, thin calls, no policy.

Every call names an `Idempotency-Key`, so a call repeated after a lost answer changes
nothing on the CRM. What an answer means is decided by the connector (`sync.connectors.mock`).

Why aiohttp (README, Decisions): measured as the client's CPU per POST to the CRM mock,
16 calls in flight (`bench/crm_client_cpu.py`), aiohttp costs about half of what
httpx over our former own HTTP/1.1 wire did, and a fifth of httpx's default transport,
and it is maintained by others: TLS, proxies, chunked and compressed answers, connection
reuse are theirs.

- **Trust and proxy** (`crm.tls`): the system's roots (`SSL_CERT_FILE`), plus
  `CRM_CA_BUNDLE`; `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` read once for the CRM's origin.
- **A call with no answer** raises `CrmUnreachable`, whose `kind` tells a certificate
  refused (`hold.HoldKind.CERTIFICATE`) or a 429 pause still running
  (`RATE_LIMITED`) from the rest (`UNREACHABLE`).
- **A kept connection the CRM had closed** (its keep-alive ran out as we sent) fails
  before any answer: the call is sent once more, on a fresh connection. Every call
  carries an Idempotency-Key, so even a POST is safe to repeat. Idle connections are
  dropped after 4 s, under the 5 s most servers keep one.
"""

import json
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from customer_service.config import Settings
from customer_service.crm.throttle import CallThrottle, CrmPaused
from customer_service.crm.tls import proxy_for, ssl_context
from customer_service.request_id import HEADER as REQUEST_ID_HEADER
from customer_service.request_id import current_request_id
from customer_service.sync.hold import HoldKind

CUSTOMERS = "/api/crm/customers"
# Under the 5 s keep-alive of most servers (uvicorn's included).
KEEPALIVE_SECONDS = 4.0
MAX_CONNECTIONS = 200


class CrmUnreachable(Exception):
    """No answer: connection refused, certificate refused, timeout, broken connection."""

    def __init__(self, message: str, kind: HoldKind = HoldKind.UNREACHABLE) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class CrmAnswer:
    status: int
    body: Any
    retry_after: str | None
    # The answer's media type when its body was not JSON (an HTML error page), else None.
    not_json: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        """The answer as an operator reads it in `lastError`: the status and the CRM's own
        detail, or what the body was when it was not JSON."""
        text = f"CRM answered {self.status}"
        if isinstance(self.body, dict):
            detail = self.body.get("detail") or self.body.get("title")
            if detail:
                return f"{text}: {detail}"
        if self.not_json is not None:
            return f"{text} with a body that is not JSON ({self.not_json})"
        return text


def _json(body: bytes) -> Any:
    return json.loads(body)


def _unreachable(exc: BaseException, timeout: float) -> CrmUnreachable:
    """What a call with no answer says, its kind included."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return CrmUnreachable(
            f"{type(exc).__name__}: no answer within {timeout:g} s (CRM_TIMEOUT_SECONDS)"
        )
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    certificate = isinstance(exc, aiohttp.ClientConnectorCertificateError) or isinstance(
        exc.__cause__ or exc.__context__, ssl.SSLCertVerificationError
    )
    return CrmUnreachable(text, HoldKind.CERTIFICATE if certificate else HoldKind.UNREACHABLE)


def open_session(settings: Settings, headers: dict[str, str]) -> aiohttp.ClientSession:
    """The aiohttp session of a CRM client (it belongs to the running loop): the trust of
    `crm.tls`, kept connections under the servers' keep-alive, CRM_TIMEOUT_SECONDS."""
    connector = aiohttp.TCPConnector(
        limit=MAX_CONNECTIONS,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ssl=ssl_context(settings.crm_ca_bundle),
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=settings.crm_timeout_seconds),
        # The CRM authenticates by token: no cookie of its answers is kept.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Proxies are read once (`crm.tls.proxy_for`); no .netrc credentials.
        trust_env=False,
    )


class CrmClient:
    """The calls of the CRM mock's API, each answered as a `CrmAnswer`.

    The aiohttp session is opened on the first call (it belongs to the running loop) and
    closed by `aclose`."""

    def __init__(
        self,
        settings: Settings,
        on_call: Callable[[str, int | None, float], None] | None = None,
        throttle: CallThrottle | None = None,
    ) -> None:
        self._settings = settings
        self._base = settings.crm_base_url.rstrip("/")
        self._customers = URL(self._base + CUSTOMERS)
        self._batch = URL(self._base + CUSTOMERS + "/batch")
        self._batch_delete = URL(self._base + CUSTOMERS + "/batch/delete")
        self._proxy = proxy_for(self._base)
        self._headers = {"Accept": "application/json"}
        if settings.crm_api_token:
            self._headers["Authorization"] = f"Bearer {settings.crm_api_token}"
        self._session: aiohttp.ClientSession | None = None
        self._throttle = throttle or CallThrottle()
        # A 429 pause longer than one call's timeout fails the call instead of waiting.
        self._patience = settings.crm_timeout_seconds
        # Told (method, status or None when there was no answer, seconds) after each call.
        self._on_call = on_call

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = open_session(self._settings, self._headers)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        url: URL | str,
        key: str | None = None,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> CrmAnswer:
        # Every call carries a key; a read gets a fresh one (repeating a read is harmless).
        headers = {"Idempotency-Key": key or str(uuid.uuid4())}
        request_id = current_request_id.get()
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        try:
            sent = await self._throttle.wait_turn(patience=self._patience)
        except CrmPaused as exc:
            raise CrmUnreachable(str(exc), HoldKind.RATE_LIMITED) from exc
        session = self._open()
        start = time.perf_counter()
        for last_try in (False, True):
            try:
                async with session.request(
                    method, url, json=json, params=params, headers=headers, proxy=self._proxy
                ) as response:
                    content = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    media = response.content_type
                break
            except aiohttp.ServerDisconnectedError as exc:
                # A kept connection closed under us before any answer: once more, fresh.
                if last_try:
                    self._observe(method, None, start)
                    raise _unreachable(exc, self._patience) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._observe(method, None, start)
                raise _unreachable(exc, self._patience) from exc
        self._observe(method, status, start)
        self._throttle.answered(status, retry_after, sent)
        body: Any = None
        not_json: str | None = None
        if content:
            try:
                body = _json(content)
            except ValueError:
                not_json = media or "no media type"
        return CrmAnswer(status, body, retry_after, not_json)

    def _observe(self, method: str, status: int | None, start: float) -> None:
        if self._on_call is not None:
            self._on_call(method, status, time.perf_counter() - start)

    async def create(self, body: dict[str, Any], key: str) -> CrmAnswer:
        return await self._call("POST", self._customers, key, json=body)

    async def upsert_batch(self, inputs: list[dict[str, Any]], key: str) -> CrmAnswer:
        """Upsert records by externalId, one call (`POST /api/crm/customers/batch`)."""
        return await self._call("POST", self._batch, key, json={"inputs": inputs})

    async def delete_batch(self, crm_ids: list[str], key: str) -> CrmAnswer:
        """Delete records by CRM id, one call (`POST /api/crm/customers/batch/delete`)."""
        return await self._call("POST", self._batch_delete, key, json={"ids": crm_ids})

    async def replace(self, crm_id: str, body: dict[str, Any], key: str) -> CrmAnswer:
        return await self._call("PUT", f"{self._customers}/{crm_id}", key, json=body)

    async def remove(self, crm_id: str, key: str) -> CrmAnswer:
        return await self._call("DELETE", f"{self._customers}/{crm_id}", key)

    async def get(self, crm_id: str) -> CrmAnswer:
        return await self._call("GET", f"{self._customers}/{crm_id}")

    async def page(self, limit: int, offset: int) -> CrmAnswer:
        """One page of the CRM's records, oldest first."""
        return await self._call("GET", self._customers, params={"limit": limit, "offset": offset})

    async def find(self, external_id: str) -> CrmAnswer:
        return await self._call(
            "GET", self._customers, params={"externalId": external_id, "limit": 100}
        )

    async def probe(self) -> "CrmAnswer | CrmUnreachable":
        """Ask the CRM whether it takes calls now: its answer to a one-record read, or why
        there was none."""
        try:
            return await self._call("GET", self._customers, params={"limit": 1})
        except CrmUnreachable as exc:
            return exc
