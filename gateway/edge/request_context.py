"""The outermost middleware: every request gets a ``RequestContext`` (``gateway.context``) with an id minted by
the server, which keys everything the request holds (limiter entries, reservations, engine requests, its ledger
record), and the client's address.

A URL holding a NUL character is a 400 here. A client's own id (``X-Client-Request-Id``, or ``x-request-id``
as proxies send it) is kept only for correlation: validated (printable ASCII, at most
``bounds.CLIENT_REQUEST_ID`` characters; else a 400), echoed back as ``x-client-request-id``, logged and stored
beside the usage record. The response's ``x-request-id`` is always the server's id. Also here: one access-log
line per request (query strings redacted: no key that a client put in a URL reaches the log) and the HTTP
metrics.

A client that goes away before its answer ends is no server error: the request is counted and logged under 499
(``CLIENT_CLOSED``), and the cancellation that stopped its work (``gateway.inference.runs.unless_gone``) ends
here, so the server logs no traceback for it."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import bounds
from gateway.context import RequestContext, new_request_id
from gateway.errors import InvalidRequestError
from gateway.ops.metrics import CLIENT_CLOSED, Metrics

access_log = logging.getLogger("llmaas.access")
_CLIENT_ID_HEADERS = ("x-client-request-id", "x-request-id")
_SECRET_WORDS = ("key", "token", "secret", "password", "auth", "sig")


def client_request_id(headers: Headers) -> str | None:
    for name in _CLIENT_ID_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if not bounds.CLIENT_REQUEST_ID_PATTERN.fullmatch(value):
            raise InvalidRequestError(
                f"The {name} header must be 1 to {bounds.CLIENT_REQUEST_ID} printable ASCII characters without spaces.",
                param=name,
                code="invalid_request_id",
            )
        return value
    return None


def check_url(scope: Scope) -> None:
    """A NUL character in the path or the query string can be neither stored nor compared by PostgreSQL."""
    if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
        raise InvalidRequestError("The URL holds a NUL character (%00).", code="invalid_url")


def loggable(text: str, limit: int = 512) -> str:
    """One printable line: escapes what could forge a log line, and cuts at ``limit``."""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def redacted_query(query: bytes) -> str:
    """The query string with the value of any parameter that could carry a secret replaced by ``***``."""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return urlencode(
        [(name, "***" if any(word in name.lower() for word in _SECRET_WORDS) else value) for name, value in pairs]
    )


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client = scope.get("client")
        context = RequestContext(id=new_request_id(), client_address=client[0] if client else None)
        scope.setdefault("state", {})["context"] = context
        status = 500
        answered = client_left = False

        async def receive_watching() -> Message:
            nonlocal client_left
            message = await receive()
            if message["type"] == "http.disconnect" and not answered:
                client_left = True
            return message

        async def send_with_context(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = context.id
                if context.client_request_id:
                    headers["x-client-request-id"] = context.client_request_id
                for name, value in context.response_headers.items():
                    headers.setdefault(name, value)
            await send(message)

        try:
            try:
                check_url(scope)
                context.client_request_id = client_request_id(Headers(scope=scope))
            except InvalidRequestError as exc:
                await exc.response()(scope, receive, send_with_context)
                return
            try:
                await self.app(scope, receive_watching, send_with_context)
            except asyncio.CancelledError:
                if not client_left:
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()  # cancelled by its own disconnect watcher: nobody is left to answer
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.metrics.observe_http(scope["method"], path, status, elapsed, client_left)
            query = scope.get("query_string", b"")
            access_log.info(
                "%s %s%s %d %.1fms %s%s",
                scope["method"],
                loggable(scope["path"]),
                f"?{loggable(redacted_query(query))}" if query else "",
                CLIENT_CLOSED if client_left else status,
                elapsed * 1000,
                context.id,
                f" client_request_id={context.client_request_id}" if context.client_request_id else "",
            )
