"""A request body must arrive within ``body_read_timeout_seconds`` of the request's headers: one that trickles in
(or stops) is cut off there and answered 408 ``request_timeout``, and the connection is closed. The deadline
covers the whole body, so sending a byte now and then does not extend it; once the body is complete, reads
(a streaming route listening for the client hanging up) are not timed."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import RequestTimeout


class BodyReadTimeoutMiddleware:
    def __init__(self, app: ASGIApp, timeout_seconds: float) -> None:
        self.app = app
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_seconds
        complete = timed_out = started = answered = False

        async def timed_receive() -> Message:
            nonlocal complete, timed_out
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect"}  # the app stops reading; its answer is replaced below
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        too_slow = RequestTimeout(
            f"The request body did not arrive within {self.timeout_seconds:g} seconds.", headers={"connection": "close"}
        )

        async def guarded_send(message: Message) -> None:
            nonlocal started, answered
            if not timed_out or started:
                started = True
                await send(message)
                return
            if not answered and message["type"] == "http.response.start":
                answered = True
                await too_slow.response()(scope, receive, send)

        await self.app(scope, timed_receive, guarded_send)
        if timed_out and not (started or answered):
            await too_slow.response()(scope, receive, send)
