"""One HTTP exchange with a CRM, as every CRM client makes it (the mock's `crm.client`,
`crm.hubspot_client`, `crm.salesforce_client`); what an answer means is theirs.

- **The session**: one aiohttp session per client (`client.open_session`: the trust of
  `crm.tls`, kept connections under the servers' keep-alive), opened on the first call
  because it belongs to the running loop, closed by `aclose`.
- **A turn**: every call waits its turn at the process's `CallThrottle`; a 429 pause
  longer than one call's timeout (`CRM_TIMEOUT_SECONDS`) fails the call as
  `CrmUnreachable(RATE_LIMITED)` instead of waiting. Telling the throttle the answer is
  the client's (HubSpot's answers carry limits of their own).
- **A kept connection the CRM had closed** before any answer: sent once more, fresh.
  Every client's calls are safe to repeat (an Idempotency-Key, an upsert by an id, a
  delete of ids).
- **No answer** raises `CrmUnreachable`, its text redacted when the client has secrets
  (and then without the aiohttp exception chained: its text is not redacted).
- Every call carries the request id, and is told to `on_call` (method, status or None,
  seconds).
"""

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from json import loads
from typing import Any

import aiohttp

from customer_service.config import Settings
from customer_service.crm.throttle import CallThrottle, CrmPaused
from customer_service.crm.tls import ssl_context
from customer_service.request_id import HEADER as REQUEST_ID_HEADER
from customer_service.request_id import current_request_id
from customer_service.sync.hold import HoldKind

CallObserver = Callable[[str, int | None, float], None]
# Under the 5 s keep-alive of most servers (uvicorn's included).
KEEPALIVE_SECONDS = 4.0
MAX_CONNECTIONS = 200


class CrmUnreachable(Exception):
    """No answer: connection refused, certificate refused, timeout, broken connection."""

    def __init__(self, message: str, kind: HoldKind = HoldKind.UNREACHABLE) -> None:
        super().__init__(message)
        self.kind = kind


def unreachable(exc: BaseException, timeout: float) -> CrmUnreachable:
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


@dataclass(frozen=True)
class Answer:
    """What every CRM client's answer holds (each client's adds what its CRM says)."""

    status: int
    # The body read as JSON (None when empty or not JSON).
    body: Any
    retry_after: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Exchanged(Answer):
    """What came back: the answer, the media type when the body was not JSON, every
    header, and the wall-clock time the call left at (for `CallThrottle.answered`)."""

    not_json: str | None
    headers: Mapping[str, str]
    sent: float


class CrmSession:
    """The exchanges of one CRM client (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        headers: dict[str, str],
        throttle: CallThrottle,
        on_call: CallObserver | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self._settings = settings
        # The session's own headers (every call's).
        self._headers = headers
        self.throttle = throttle
        self._patience = settings.crm_timeout_seconds
        self._on_call = on_call
        self._redact = redact
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = open_session(self._settings, self._headers)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        method: str,
        url: Any,
        *,
        proxy: str | None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> Exchanged:
        """One call after its turn at the throttle; `CrmUnreachable` when no answer."""
        sent_headers = dict(headers or {})
        request_id = current_request_id.get()
        if request_id is not None:
            sent_headers[REQUEST_ID_HEADER] = request_id
        try:
            sent = await self.throttle.wait_turn(patience=self._patience)
        except CrmPaused as exc:
            raise CrmUnreachable(str(exc), HoldKind.RATE_LIMITED) from exc
        session = self._open()
        start = time.perf_counter()
        for last_try in (False, True):
            try:
                async with session.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    data=data,
                    headers=sent_headers,
                    proxy=proxy,
                ) as response:
                    content = await response.read()
                    status = response.status
                    answered_headers = response.headers
                    media = response.content_type
                break
            except aiohttp.ServerDisconnectedError as exc:
                # A kept connection closed under us before any answer: once more, fresh.
                if last_try:
                    self._observe(method, None, start)
                    raise self._unreachable(exc) from self._cause(exc)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._observe(method, None, start)
                raise self._unreachable(exc) from self._cause(exc)
        self._observe(method, status, start)
        body: Any = None
        not_json: str | None = None
        if content:
            try:
                body = loads(content)
            except ValueError:
                not_json = media or "no media type"
        retry_after = answered_headers.get("Retry-After")
        return Exchanged(status, body, retry_after, not_json, answered_headers, sent)

    def _unreachable(self, exc: BaseException) -> CrmUnreachable:
        found = unreachable(exc, self._patience)
        if self._redact is None:
            return found
        return CrmUnreachable(self._redact(str(found)), found.kind)

    def _cause(self, exc: BaseException) -> BaseException | None:
        """The exception chained to `CrmUnreachable`: none when its text may hold a
        secret."""
        return exc if self._redact is None else None

    def _observe(self, method: str, status: int | None, start: float) -> None:
        if self._on_call is not None:
            self._on_call(method, status, time.perf_counter() - start)
