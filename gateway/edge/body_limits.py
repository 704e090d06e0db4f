"""Body size caps per route, enforced before the route reads anything: a ``Content-Length`` over the cap is
refused at once with a 413, and a body sent without one (chunked) is cut off with a 413 as soon as it passes
the cap while streaming in. Uploads (``POST /v1/files``) may be ``max_upload_bytes`` plus room for the
multipart framing; every other route takes at most ``max_body_bytes`` of JSON."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import PayloadTooLarge

MULTIPART_ALLOWANCE = 64 * 1024
"""Room for the multipart boundaries and the form's small fields around an upload."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def limit_for(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"] == "/v1/files":
            return self.max_upload_bytes + MULTIPART_ALLOWANCE
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        too_large = PayloadTooLarge(f"The request body is larger than this route's limit of {limit} bytes.")
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await too_large.response()(scope, receive, send)
            return
        received = 0
        exceeded = False
        answered = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}  # the app stops reading; its answer is replaced below
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if not exceeded:
                await send(message)
                return
            if not answered and message["type"] == "http.response.start":
                answered = True
                await too_large.response()(scope, receive, send)

        await self.app(scope, limited_receive, guarded_send)
        if exceeded and not answered:
            await too_large.response()(scope, receive, send)
