"""Salesforce's REST API, the calls the Salesforce connector makes (thin, no policy).

- **The token**: the OAuth 2.0 client credentials flow, `POST
  {SALESFORCE_LOGIN_URL}/services/oauth2/token` with `grant_type=client_credentials`,
  `client_id` and `client_secret` as form fields; the answer names the `access_token` and
  the org's `instance_url`, where every data call goes:
  https://developer.salesforce.com/docs/atlas.en-us.262.0.chatterapi.meta/chatterapi/quickstart_connecting.htm
  (the endpoints:
  https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_endpoints.htm
  ).
  One token is kept and shared by every call of the process, fetched on the first call
  (one fetch at a time: calls that need it meanwhile wait for that one). The flow gives
  no refresh token and states no lifetime: a data call answered 401 (an expired or
  revoked session, `INVALID_SESSION_ID`) fetches a new token, unless another call did
  already, and is sent once more; a second 401 is the answer.
- **A token refused** (`invalid_client`, ...) raises `TokenRefused` with the answer: the
  connector holds deliveries for it, as for a 401.
- **Data calls**: `Authorization: Bearer <token>` on `{instance_url}/services/data/
  v{SALESFORCE_API_VERSION}/...`: sObject Collections upsert (PATCH) and delete, and
  `/query` with `nextRecordsUrl` (the pages: `salesforce_answers`, the connector).

Every call, the token's included, waits its turn at the process's `CallThrottle` and
is sent on one aiohttp session with the CRM client's trust and proxy settings
(`crm.exchange.CrmSession`). A kept connection closed under us before any answer is sent
once more, fresh: an upsert by external id and a delete of Ids are safe to repeat.

Secrets: the client secret is only in the token request's form, each access token only
in the `Authorization` header of a call; every text the client reports is redacted of
the secret and of every token it was given (`redact`).
"""

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from customer_service.config import Settings
from customer_service.crm.exchange import Answer, CrmSession
from customer_service.crm.salesforce_answers import describe, error_code, redact
from customer_service.crm.throttle import CallThrottle
from customer_service.crm.tls import proxy_for
from customer_service.sync.connector import CallObserver

TOKEN_PATH = "/services/oauth2/token"
SOBJECT = "Contact"
# The most records of one collections call, and the page sizes a query may ask for.
MAX_BATCH = 200
MIN_PAGE, MAX_PAGE = 200, 2000
# Tokens kept for redaction (the current one and those before it).
KEPT_TOKENS = 16


@dataclass(frozen=True)
class SalesforceAnswer(Answer):
    # The media type when the body was not JSON (a proxy's HTML page), else None.
    not_json: str | None = None
    # Who answered, as `describe` names it.
    what: str = "Salesforce"

    @property
    def code(self) -> str | None:
        """The error code of a refusal (`REQUEST_LIMIT_EXCEEDED`, `invalid_client`...)."""
        return None if self.ok else error_code(self.body)

    def describe(self) -> str:
        return describe(self.status, self.body, self.not_json, self.what)


class TokenRefused(Exception):
    """The token endpoint gave no token: its answer says why."""

    def __init__(self, answer: SalesforceAnswer, text: str) -> None:
        super().__init__(text)
        self.answer = answer


class SalesforceClient:
    """The calls, each answered as a `SalesforceAnswer`; `CrmUnreachable` when there is no
    answer, `TokenRefused` when no token could be had. The session opens on the first
    call and closes with `aclose`."""

    def __init__(
        self,
        settings: Settings,
        on_call: CallObserver | None = None,
        throttle: CallThrottle | None = None,
    ) -> None:
        self._login = settings.salesforce_login_url.rstrip("/")
        self._client_id = settings.salesforce_client_id
        self._client_secret = settings.salesforce_client_secret
        self.data_path = f"/services/data/v{settings.salesforce_api_version}"
        self._tokens: deque[str] = deque(maxlen=KEPT_TOKENS)
        self._token: str | None = None
        self._instance: str | None = None
        self._token_lock: asyncio.Lock | None = None
        self._proxies: dict[str, str | None] = {}
        self.throttle = throttle or CallThrottle()
        self._exchange = CrmSession(
            settings, {"Accept": "application/json"}, self.throttle, on_call, self.redact
        )
        # Tokens fetched since start (a test reads it: one per expiry, not one per call).
        self.tokens_fetched = 0

    def redact(self, text: str) -> str:
        return redact(text, (self._client_secret, *self._tokens))

    async def aclose(self) -> None:
        await self._exchange.aclose()

    def _proxy(self, url: str) -> str | None:
        origin = url.split("/", 3)
        key = "/".join(origin[:3])
        if key not in self._proxies:
            self._proxies[key] = proxy_for(key)
        return self._proxies[key]

    # -- one HTTP exchange ------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        token: str | None,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        what: str = "Salesforce",
    ) -> SalesforceAnswer:
        sent_headers = dict(headers or {})
        if token is not None:
            sent_headers["Authorization"] = f"Bearer {token}"
        exchanged = await self._exchange.send(
            method,
            url,
            proxy=self._proxy(url),
            headers=sent_headers,
            json=json,
            params=params,
            data=form,
        )
        self.throttle.answered(exchanged.status, exchanged.retry_after, exchanged.sent)
        return SalesforceAnswer(
            exchanged.status, exchanged.body, exchanged.retry_after, exchanged.not_json, what
        )

    # -- the token ----------------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        if self._token_lock is None:
            self._token_lock = asyncio.Lock()
        return self._token_lock

    async def _current_token(self) -> tuple[str, str]:
        """The shared token and instance URL, fetched when there is none yet."""
        if self._token is None or self._instance is None:
            async with self._lock():
                if self._token is None or self._instance is None:
                    await self._fetch_token()
        assert self._token is not None and self._instance is not None
        return self._token, self._instance

    async def _renew(self, stale: str) -> None:
        """A new token in place of `stale`, unless another call renewed it already."""
        async with self._lock():
            if self._token == stale:
                self._token = None
                await self._fetch_token()

    async def _fetch_token(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
        }
        answer = await self._send(
            "POST",
            self._login + TOKEN_PATH,
            None,
            form=form,
            what="Salesforce's token endpoint",
        )
        body = answer.body if isinstance(answer.body, dict) else {}
        token, instance = body.get("access_token"), body.get("instance_url")
        if not answer.ok or not isinstance(token, str) or not isinstance(instance, str):
            text = answer.describe()
            if answer.ok:
                text += " without an access_token and instance_url"
            raise TokenRefused(answer, self.redact(text))
        self._tokens.append(token)
        self._token, self._instance = token, instance.rstrip("/")
        self.tokens_fetched += 1

    # -- data calls ---------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> SalesforceAnswer:
        """A data call on the instance with the shared token; a 401 renews the token
        once and sends the call again."""
        token, instance = await self._current_token()
        answer = await self._send(
            method, instance + path, token, json=json, params=params, headers=headers
        )
        if answer.status != 401:
            return answer
        await self._renew(token)
        token, instance = await self._current_token()
        return await self._send(
            method, instance + path, token, json=json, params=params, headers=headers
        )

    async def upsert(
        self, records: list[dict[str, Any]], external_id_field: str
    ) -> SalesforceAnswer:
        """Upsert Contacts by an external id field, `allOrNone` false: one result per
        record, in order."""
        path = f"{self.data_path}/composite/sobjects/{SOBJECT}/{external_id_field}"
        body = {"allOrNone": False, "records": records}
        return await self._call("PATCH", path, json=body)

    async def delete(self, crm_ids: Sequence[str]) -> SalesforceAnswer:
        """Delete records by Id, `allOrNone` false: one result per Id, in order."""
        params = {"ids": ",".join(crm_ids), "allOrNone": "false"}
        return await self._call("DELETE", f"{self.data_path}/composite/sobjects", params=params)

    async def query(self, soql: str, page_size: int = MAX_PAGE) -> SalesforceAnswer:
        """The first page of a SOQL query (`page_size` records, 200 to 2000, asked for
        with `Sforce-Query-Options: batchSize`)."""
        size = max(MIN_PAGE, min(page_size, MAX_PAGE))
        return await self._call(
            "GET",
            f"{self.data_path}/query",
            params={"q": soql},
            headers={"Sforce-Query-Options": f"batchSize={size}"},
        )

    async def query_more(self, next_records_url: str) -> SalesforceAnswer:
        """The page a query's `nextRecordsUrl` names."""
        if not next_records_url.startswith("/services/data/"):
            raise ValueError("not a nextRecordsUrl of this instance")
        return await self._call("GET", next_records_url)
