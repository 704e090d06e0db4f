"""Limits on connections, below the ASGI app: uvicorn calls the app only once a request's headers are complete,
so what happens before that is bounded here, in uvicorn's own HTTP protocol (httptools), extended:

* A connection must send a complete request line and headers within ``header_read_timeout_seconds`` of opening
  (or of the first byte of a later request on it); a silent connection, or headers that trickle in, is closed.
* A request line and headers beyond ``max_header_bytes`` are answered 431 and the connection is closed
  (httptools sets no bound of its own).
* At most ``max_connections_per_address`` connections from one client address are open at once: a further one
  is answered 429 ``too_many_connections`` and closed at once, uncounted. Behind a reverse proxy
  every connection comes from the proxy's address: raise the cap or leave it unset there.

Between requests, uvicorn's ``timeout_keep_alive`` closes an idle connection; a body that does not arrive in
time is the ASGI middleware ``body_timeout``'s (a 408), and a connection whose body still trickles in
``BODY_GRACE_SECONDS`` after that deadline (the app answered early, without reading it) is closed here.
``uvicorn_options`` gives ``uvicorn.Config`` all of these."""

from __future__ import annotations

import asyncio
from collections import Counter
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import APIError, HeadersTooLarge, RateLimited
from gateway.settings import GatewaySettings

BODY_GRACE_SECONDS = 1.0


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size cap and a per-address connection cap;
    ``limited_protocol`` makes a subclass with the numbers (and its own count of open connections)."""

    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_per_address: int | None
    open_per_address: Counter[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True
        self._header_bytes = 0
        self._tail = b""
        self._counted: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        if host is not None and self.max_per_address is not None:
            if self.open_per_address[host] >= self.max_per_address:
                # Answered and closed at once: a refused connection must not stay open (uncounted) until its
                # header deadline.
                self._refuse(
                    RateLimited(
                        f"Too many open connections from your address (at most {self.max_per_address}).",
                        code="too_many_connections",
                        headers={"retry-after": "1"},
                    )
                )
                return
            else:
                self.open_per_address[host] += 1
                self._counted = host
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        if self._counted is not None:
            self.open_per_address[self._counted] -= 1
            if self.open_per_address[self._counted] <= 0:
                del self.open_per_address[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:  # counted before parsing: llhttp would hold them all
            end = (self._tail + data).find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else max(end + 4 - len(self._tail), 0)
            self._tail = (self._tail + data)[-3:]
            if self._header_bytes > self.max_header_bytes:
                self._refuse(HeadersTooLarge(f"The request's headers are larger than {self.max_header_bytes} bytes."))
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        # The body's deadline is kept by the app (a 408); this one, a little later, closes a connection whose body
        # still trickles in after the app answered early (a 401 before the body was read, say).
        self._body_timer = self.loop.call_later(self.body_timeout + BODY_GRACE_SECONDS, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()
        self._awaiting_headers = True  # what comes next on this connection is another request's headers
        self._header_bytes = 0
        self._tail = b""

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, error: APIError) -> None:
        """Answer ``error`` without the app and close (the request's headers never reached it)."""
        body = error.response().body
        status = f"HTTP/1.1 {error.status_code} {HTTPStatus(error.status_code).phrase}\r\n"
        headers = f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        self.transport.write((status + headers).encode() + body)
        self.transport.close()


def limited_protocol(settings: GatewaySettings) -> type[LimitedHttpProtocol]:
    return type(
        "ConfiguredHttpProtocol",
        (LimitedHttpProtocol,),
        {
            "header_timeout": settings.header_read_timeout_seconds,
            "body_timeout": settings.body_read_timeout_seconds,
            "max_header_bytes": settings.max_header_bytes,
            "max_per_address": settings.max_connections_per_address,
            "open_per_address": Counter(),
        },
    )


def uvicorn_options(settings: GatewaySettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` that apply the connection limits and say which
    peers' ``X-Forwarded-*`` headers are trusted (``LLMAAS_FORWARDED_ALLOW_IPS``)."""
    return {
        "http": limited_protocol(settings),
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
