"""`X-Request-ID`: taken from the request or made, returned on the answer, and carried in a
context variable so every log line about the request, and every CRM call it causes, names it.

Background work started while serving a request (the delivery kicked after its commit)
is an asyncio task, which copies the context: its log lines and CRM calls carry the id too.
"""

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
# What we accept from a client: short and plain, so it is safe in a log line or a header.
ACCEPTED = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")

current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def accept_or_make(value: str | None) -> str:
    """The client's id when it is a plain one, else a fresh one."""
    if value is not None and ACCEPTED.match(value):
        return value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would run the app in another task)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or [])
        raw = sent.get(HEADER.lower().encode())
        request_id = accept_or_make(raw.decode("latin-1") if raw is not None else None)
        token = current_request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (`-` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get() or "-"
        return True
