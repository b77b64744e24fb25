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

The exchange itself (session, throttle turn, resend, no answer) is `crm.exchange`, which
HubSpot's and Salesforce's clients share.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yarl import URL

from customer_service.config import Settings
from customer_service.crm.exchange import Answer, CrmSession

# Raised by every CRM client; its home is the exchange, its name here as ever.
from customer_service.crm.exchange import CrmUnreachable as CrmUnreachable
from customer_service.crm.throttle import CallThrottle
from customer_service.crm.tls import proxy_for

CUSTOMERS = "/api/crm/customers"


@dataclass(frozen=True)
class CrmAnswer(Answer):
    # The answer's media type when its body was not JSON (an HTML error page), else None.
    not_json: str | None = None

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
        self._base = settings.crm_base_url.rstrip("/")
        self._customers = URL(self._base + CUSTOMERS)
        self._batch = URL(self._base + CUSTOMERS + "/batch")
        self._batch_delete = URL(self._base + CUSTOMERS + "/batch/delete")
        self._proxy = proxy_for(self._base)
        self._headers = {"Accept": "application/json"}
        if settings.crm_api_token:
            self._headers["Authorization"] = f"Bearer {settings.crm_api_token}"
        self._throttle = throttle or CallThrottle()
        # `on_call` is told (method, status or None when there was no answer, seconds)
        # after each call.
        self._exchange = CrmSession(settings, self._headers, self._throttle, on_call)

    async def aclose(self) -> None:
        await self._exchange.aclose()

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
        answer = await self._exchange.send(
            method, url, proxy=self._proxy, headers=headers, json=json, params=params
        )
        self._throttle.answered(answer.status, answer.retry_after, answer.sent)
        return CrmAnswer(answer.status, answer.body, answer.retry_after, answer.not_json)

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
