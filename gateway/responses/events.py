"""A streamed response as OpenAI sends it: server-sent events with ``event: <type>`` lines, each event's JSON
carrying its ``type`` and a ``sequence_number`` counted from 0, in the order the SDK's ``responses.stream()``
checks: ``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta`` (one per batch of tokens),
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``, then
``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut the answer). An error after the
stream began ends it with ``response.failed`` (the response's ``error`` says what happened). No ``[DONE]``.

The finished response is stored (``store``) before its last event goes out, so a client that saw
``response.completed`` can retrieve or continue it from any gateway at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from engine.protocol import FinishReason
from gateway.errors import as_api_error
from gateway.inference.sse import sse_frame
from gateway.responses.objects import OutputTextPart, ResponseErrorOut, ResponseObject, new_id
from gateway.responses.turns import Turn, answer

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
    message_id = new_id("msg")
    located = {"item_id": message_id, "output_index": 0}
    text = ""
    try:
        item = answer(message_id, "", "in_progress").model_dump(mode="json")
        item["content"] = []
        yield event_frame(event("response.output_item.added", output_index=0, item=item))
        empty_part = OutputTextPart(text="").model_dump(mode="json")
        yield event_frame(event("response.content_part.added", **located, content_index=0, part=empty_part))
        finish_reason: FinishReason | None = None
        async for _, delta in turn.run.deltas():
            finish_reason = delta.finish_reason or finish_reason
            if delta.text:
                text += delta.text
                yield event_frame(
                    event("response.output_text.delta", **located, content_index=0, delta=delta.text, logprobs=[])
                )
        finished = turn.finished(message_id, text, finish_reason)
        yield event_frame(event("response.output_text.done", **located, content_index=0, text=text, logprobs=[]))
        part = finished.output[0].content[0].model_dump(mode="json")
        yield event_frame(event("response.content_part.done", **located, content_index=0, part=part))
        done_item = finished.output[0].model_dump(mode="json")
        yield event_frame(event("response.output_item.done", output_index=0, item=done_item))
        await run_in_threadpool(remember, finished)
    except Exception as exc:
        error = as_api_error(exc)
        cause = ResponseErrorOut(code=error.code or "server_error", message=error.message)
        failed = turn.snapshot("failed", [answer(message_id, text, "incomplete")], error=cause)
        yield event_frame(event("response.failed", response=_response(failed)))
        return
    yield event_frame(event(_FINAL_EVENT[finished.status], response=_response(finished)))
