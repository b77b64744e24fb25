"""The httpx client of the CRM: one shared `httpx.AsyncClient`, thin calls, no policy.

Every call names an `Idempotency-Key`, so a call repeated after a lost answer changes
nothing on the CRM. What an answer means is decided by `sync.transports.http`.
"""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from customer_service.config import Settings
from customer_service.crm.throttle import CallThrottle, CrmPaused
from customer_service.crm.transport import CrmTransport
from customer_service.request_id import HEADER as REQUEST_ID_HEADER
from customer_service.request_id import current_request_id

CUSTOMERS = "/api/crm/customers"


class CrmUnreachable(Exception):
    """No answer: connection refused, timeout, broken connection."""


@dataclass(frozen=True)
class CrmAnswer:
    status: int
    body: Any
    retry_after: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        detail = (
            self.body.get("detail") or self.body.get("title")
            if isinstance(self.body, dict)
            else None
        )
        return f"CRM answered {self.status}" + (f": {detail}" if detail else "")


class _KeepNoCookies(httpx.Cookies):
    """The CRM authenticates by token: no cookie of its answers is kept (httpx parses
    every answer's headers for cookies otherwise; profiled, about a tenth of a call's
    CPU)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _CrmHttpClient(httpx.AsyncClient):
    _no_cookies = _KeepNoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("the CRM client keeps no cookies")


def build_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one client of the process: pooled connections, the timeout, the bearer token,
    and no cookie jar."""
    headers = {"Accept": "application/json"}
    if settings.crm_api_token:
        headers["Authorization"] = f"Bearer {settings.crm_api_token}"
    return _CrmHttpClient(
        base_url=settings.crm_base_url,
        timeout=httpx.Timeout(settings.crm_timeout_seconds),
        headers=headers,
        # httpx's client on a leaner wire than its default transport (`transport` says why).
        transport=CrmTransport(max_connections=200, max_idle=50),
    )


class CrmClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        on_call: Callable[[str, int | None, float], None] | None = None,
        throttle: CallThrottle | None = None,
    ) -> None:
        self._http = http
        # The create's URL, joined to the base once as httpx joins a relative one (it
        # would parse and join it on every call); its base path always ends with a slash.
        base = http.base_url
        self._customers = base.copy_with(raw_path=base.raw_path + CUSTOMERS[1:].encode())
        self._throttle = throttle or CallThrottle()
        # A 429 pause longer than one call's timeout fails the call instead of waiting.
        timeout = http.timeout.read
        self._patience = timeout if timeout is not None else 2.0
        # Told (method, status or None when there was no answer, seconds) after each call.
        self._on_call = on_call

    async def _call(
        self,
        method: str,
        path: str | httpx.URL,
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
            await self._throttle.wait_turn(patience=self._patience)
        except CrmPaused as exc:
            raise CrmUnreachable(str(exc)) from exc
        start = time.perf_counter()
        try:
            response = await self._http.request(
                method, path, json=json, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            self._observe(method, None, start)
            raise CrmUnreachable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        self._observe(method, response.status_code, start)
        if response.status_code == 429:
            self._throttle.too_many_requests(response.headers.get("Retry-After"))
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        return CrmAnswer(response.status_code, body, response.headers.get("Retry-After"))

    def _observe(self, method: str, status: int | None, start: float) -> None:
        if self._on_call is not None:
            self._on_call(method, status, time.perf_counter() - start)

    async def create(self, body: dict[str, Any], key: str) -> CrmAnswer:
        return await self._call("POST", self._customers, key, json=body)

    async def replace(self, crm_id: str, body: dict[str, Any], key: str) -> CrmAnswer:
        return await self._call("PUT", f"{CUSTOMERS}/{crm_id}", key, json=body)

    async def remove(self, crm_id: str, key: str) -> CrmAnswer:
        return await self._call("DELETE", f"{CUSTOMERS}/{crm_id}", key)

    async def get(self, crm_id: str) -> CrmAnswer:
        return await self._call("GET", f"{CUSTOMERS}/{crm_id}")

    async def page(self, limit: int, offset: int) -> CrmAnswer:
        """One page of the CRM's records, oldest first."""
        return await self._call("GET", CUSTOMERS, params={"limit": limit, "offset": offset})

    async def find(self, external_id: str) -> CrmAnswer:
        return await self._call("GET", CUSTOMERS, params={"externalId": external_id, "limit": 100})

    async def ping(self) -> bool:
        """Does the CRM answer its customer API now?"""
        try:
            answer = await self._call("GET", CUSTOMERS, params={"limit": 1})
        except CrmUnreachable:
            return False
        return answer.ok
