"""A streamed response as OpenAI sends it: server-sent events with ``event: <type>`` lines, each event's JSON
carrying its ``type`` and a ``sequence_number`` counted from 0, in the order the SDK's ``responses.stream()``
checks: ``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta`` (one per batch of tokens),
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``, then
``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut the answer); function calls are
items of their own, with ``response.function_call_arguments.delta`` / ``.done`` (``gateway.responses.output``).
An error after the stream began ends it with ``response.failed`` (the response's ``error`` says what happened).
No ``[DONE]``.

The finished response is stored (``store``) before its last event goes out, so a client that saw
``response.completed`` can retrieve or continue it from any gateway at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from engine.protocol import FinishReason
from gateway.errors import as_api_error
from gateway.inference.sse import sse_frame
from gateway.responses.objects import ResponseErrorOut, ResponseObject
from gateway.responses.turns import Turn

_FINAL_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete"}


def event_frame(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\n" + sse_frame(event)


class _Sequence:
    def __init__(self) -> None:
        self._next = 0

    def __call__(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._next, **fields}
        self._next += 1
        return event


def _response(response: ResponseObject) -> dict[str, Any]:
    return response.model_dump(mode="json")


async def response_events(turn: Turn, remember: Callable[[ResponseObject], None]) -> AsyncIterator[bytes]:
    """The frames of ``turn``'s stream; ``remember`` (blocking) keeps the finished response."""
    event = _Sequence()
    started = turn.snapshot("in_progress", [])
    yield event_frame(event("response.created", response=_response(started)))
    yield event_frame(event("response.in_progress", response=_response(started)))
    output = turn.output()
    try:
        finish_reason: FinishReason | None = None
        async for _, delta in turn.run.deltas():
            finish_reason = delta.finish_reason or finish_reason
            for kind, fields in output.feed(delta.text):
                yield event_frame(event(kind, **fields))
        for kind, fields in output.finish(finish_reason):
            yield event_frame(event(kind, **fields))
        finished = turn.finished(output)
        await run_in_threadpool(remember, finished)
    except Exception as exc:
        error = as_api_error(exc)
        cause = ResponseErrorOut(code=error.code or "server_error", message=error.message)
        failed = turn.snapshot("failed", output.items, error=cause)
        yield event_frame(event("response.failed", response=_response(failed)))
        return
    yield event_frame(event(_FINAL_EVENT[finished.status], response=_response(finished)))
