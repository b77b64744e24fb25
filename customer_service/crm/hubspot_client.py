"""HubSpot's CRM v3 contacts API, the calls the HubSpot connector makes (thin, no policy).

`Authorization: Bearer HUBSPOT_ACCESS_TOKEN` (a private app's token:
https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines), on one
aiohttp session with the CRM client's trust and proxy settings (`crm.tls`). Every call
waits its turn at the process's `CallThrottle`, and tells it what the answer says of the
limits: the `X-HubSpot-RateLimit-*` headers pace the calls before any 429
(`CallThrottle.advertised`); a 429 of the ten-second window pauses every call for its
`Retry-After`, or for the window the headers name when it has none. A 429 `DAILY` is
left to the connector, which holds deliveries until the daily reset.

The token is never part of what a call reports: an error's text is redacted of it
(`hubspot_answers.redact`) before it can reach a log line or a `lastError`.

The endpoints (our words; HubSpot's reference pages):
- `POST /crm/v3/objects/contacts/batch/upsert`:
  https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts
- `POST /crm/v3/objects/contacts/batch/archive` and `/batch/read` (by the id property
  with `idProperty`), `GET /crm/v3/objects/contacts?limit&after&properties`:
  https://developers.hubspot.com/docs-beta/crm/contacts
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from customer_service.config import Settings
from customer_service.crm.exchange import Answer, CrmSession
from customer_service.crm.hubspot_answers import (
    DAILY,
    RateHeaders,
    describe,
    policy_of,
    redact,
)
from customer_service.crm.throttle import CallThrottle
from customer_service.crm.tls import proxy_for
from customer_service.sync.connector import CallObserver

CONTACTS = "/crm/v3/objects/contacts"
# HubSpot's most records per batch call, and per page of the contacts list.
MAX_BATCH = 100
MAX_PAGE = 100


@dataclass(frozen=True)
class HubSpotAnswer(Answer):
    rate: RateHeaders
    # The media type when the body was not JSON (a proxy's HTML page), else None.
    not_json: str | None = None

    @property
    def policy(self) -> str | None:
        """Which limit a 429 names (`DAILY`, `TEN_SECONDLY_ROLLING`), if any."""
        return policy_of(self.body) if self.status == 429 else None

    def describe(self) -> str:
        return describe(self.status, self.body, self.not_json)


class HubSpotClient:
    """The contacts calls, each answered as a `HubSpotAnswer`; `CrmUnreachable` when there
    is no answer. The session opens on the first call and closes with `aclose`."""

    def __init__(
        self,
        settings: Settings,
        on_call: CallObserver | None = None,
        throttle: CallThrottle | None = None,
    ) -> None:
        self._base = settings.hubspot_base_url.rstrip("/")
        self._proxy = proxy_for(self._base)
        self._secrets = (settings.hubspot_access_token,)
        self._headers = {
            "Accept": "application/json",
            "Authorization": f"Bearer {settings.hubspot_access_token}",
        }
        self.throttle = throttle or CallThrottle()
        self._exchange = CrmSession(settings, self._headers, self.throttle, on_call, self.redact)

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    async def aclose(self) -> None:
        await self._exchange.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> HubSpotAnswer:
        # (Upserts by the id property and archives are safe to repeat.)
        exchanged = await self._exchange.send(
            method, self._base + path, proxy=self._proxy, json=json, params=params
        )
        answer = HubSpotAnswer(
            exchanged.status,
            exchanged.body,
            exchanged.retry_after,
            RateHeaders.of(exchanged.headers),
            exchanged.not_json,
        )
        self._tell_throttle(answer, exchanged.sent)
        return answer

    def _tell_throttle(self, answer: HubSpotAnswer, sent: float) -> None:
        rate = answer.rate
        if rate.limited:
            self.throttle.advertised(rate.max, rate.remaining, rate.interval_seconds)
        elif rate.max is not None:
            self.throttle.advertised(None, None, None)
        if answer.status != 429:
            self.throttle.answered(answer.status, None, sent)
        elif answer.policy != DAILY:
            # The ten-second window: pause every call for its Retry-After, or the window.
            wait = answer.retry_after
            if wait is None and rate.interval_seconds:
                wait = str(math.ceil(rate.interval_seconds))
            self.throttle.answered(429, wait, sent)

    async def upsert(self, inputs: list[dict[str, Any]]) -> HubSpotAnswer:
        return await self._call("POST", f"{CONTACTS}/batch/upsert", json={"inputs": inputs})

    async def archive(self, hubspot_ids: Sequence[str]) -> HubSpotAnswer:
        inputs = [{"id": value} for value in hubspot_ids]
        return await self._call("POST", f"{CONTACTS}/batch/archive", json={"inputs": inputs})

    async def read(
        self, ids: Sequence[str], properties: Sequence[str], id_property: str | None = None
    ) -> HubSpotAnswer:
        """Contacts by HubSpot id, or by the values of `id_property`."""
        body: dict[str, Any] = {
            "inputs": [{"id": value} for value in ids],
            "properties": list(properties),
        }
        if id_property is not None:
            body["idProperty"] = id_property
        return await self._call("POST", f"{CONTACTS}/batch/read", json=body)

    async def page(self, after: str | None, limit: int, properties: Sequence[str]) -> HubSpotAnswer:
        """One page of the contacts list, from the cursor `after`."""
        params: dict[str, Any] = {
            "limit": max(1, min(limit, MAX_PAGE)),
            "properties": ",".join(properties),
        }
        if after:
            params["after"] = after
        return await self._call("GET", CONTACTS, params=params)
