"""Server-sent events for streamed completions: ``data: {json}`` frames ending with ``data: [DONE]``, errors
after the stream started sent as ``data: {"error": ...}``, and generation stopped when the client leaves."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import as_api_error

DONE = b"data: [DONE]\n\n"


def sse_frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def sse_frames(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Encode chunks as frames; an error mid-stream becomes an error frame, then ``[DONE]``."""
    try:
        async for chunk in chunks:
            yield sse_frame(chunk)
    except Exception as exc:
        yield sse_frame(as_api_error(exc).body())
    finally:
        await aclose(chunks)
    yield DONE


async def aclose(iterator: AsyncIterable[Any]) -> None:
    """Close an async generator (anything else has nothing to close)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


class EventStreamResponse(StreamingResponse):
    """Streams frames while listening for the client's disconnect, whatever ASGI version the server speaks.

    On disconnect the body iterator is cancelled and closed at once, which aborts the engine request; this
    does not wait for the next token to fail on a closed socket.
    """

    media_type = "text/event-stream"

    def __init__(self, frames: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(frames, headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away while we were writing
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await aclose(self.body_iterator)
            self._on_close()
