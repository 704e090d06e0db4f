"""A response's output items, built from its tool parser's events (``gateway.inference.tool_output``): text goes
into a message item, each call into a ``function_call`` item, in the order the model wrote them. Each step also
yields the stream events it makes (type and fields, without sequence numbers): a streamed response sends them,
a whole one keeps only the items.

An item opens with ``response.output_item.added`` (a message also with ``response.content_part.added``), grows
with ``response.output_text.delta`` or ``response.function_call_arguments.delta``, and closes with
``response.output_text.done`` + ``response.content_part.done`` or ``response.function_call_arguments.done``, then
``response.output_item.done``. An answer with neither text nor calls is one empty message."""

from __future__ import annotations

from typing import Any

from engine.protocol import FinishReason
from gateway.inference.tool_output import Event, OutputParser, TextDelta, ToolCallArguments, ToolCallStarted
from gateway.responses.objects import FunctionCallOut, ItemStatus, OutputItem, OutputMessage, OutputTextPart, new_id

StreamEvent = tuple[str, dict[str, Any]]


class Output:
    def __init__(self, parser: OutputParser) -> None:
        self._parser = parser
        self.items: list[OutputItem] = []
        self._open = False

    def feed(self, text: str) -> list[StreamEvent]:
        return self._apply(self._parser.feed(text)) if text else []

    def finish(self, finish_reason: FinishReason | None) -> list[StreamEvent]:
        """The parser's last events and the last item closed (``incomplete`` when ``max_output_tokens`` cut it)."""
        events = self._apply(self._parser.finish())
        if not self.items:
            events += self._open_message()
        return events + self._close("incomplete" if finish_reason == "length" else "completed")

    @property
    def incomplete(self) -> bool:
        return any(item.status == "incomplete" for item in self.items)

    def _apply(self, parsed: list[Event]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for event in parsed:
            if isinstance(event, TextDelta):
                if not (self._open and isinstance(self.items[-1], OutputMessage)):
                    events += self._close("completed") + self._open_message()
                message = self.items[-1]
                assert isinstance(message, OutputMessage)
                message.content[0].text += event.text
                delta = {**self._at(), "content_index": 0, "delta": event.text, "logprobs": []}
                events.append(("response.output_text.delta", delta))
            elif isinstance(event, ToolCallStarted):
                events += self._close("completed")
                call = FunctionCallOut(
                    id=new_id("fc"), call_id=event.call_id, name=event.name, arguments="", status="in_progress"
                )
                events += self._added(call)
            else:
                events += self._arguments(event)
        return events

    def _arguments(self, event: ToolCallArguments) -> list[StreamEvent]:
        call = self.items[-1]
        assert isinstance(call, FunctionCallOut) and self._open
        call.arguments += event.text
        return [("response.function_call_arguments.delta", {**self._at(), "delta": event.text})]

    def _open_message(self) -> list[StreamEvent]:
        message = OutputMessage(id=new_id("msg"), status="in_progress", content=[OutputTextPart(text="")])
        events = self._added(message)
        part = OutputTextPart(text="").model_dump(mode="json")
        return [*events, ("response.content_part.added", {**self._at(), "content_index": 0, "part": part})]

    def _added(self, item: OutputItem) -> list[StreamEvent]:
        self.items.append(item)
        self._open = True
        shown = item.model_dump(mode="json")
        if isinstance(item, OutputMessage):
            shown["content"] = []
        return [("response.output_item.added", {"output_index": len(self.items) - 1, "item": shown})]

    def _close(self, status: ItemStatus) -> list[StreamEvent]:
        if not self._open:
            return []
        self._open = False
        item = self.items[-1]
        item.status = status
        at = self._at()
        if isinstance(item, OutputMessage):
            part = item.content[0]
            events: list[StreamEvent] = [
                ("response.output_text.done", {**at, "content_index": 0, "text": part.text, "logprobs": []}),
                ("response.content_part.done", {**at, "content_index": 0, "part": part.model_dump(mode="json")}),
            ]
        else:
            events = [("response.function_call_arguments.done", {**at, "name": item.name, "arguments": item.arguments})]
        done = {"output_index": at["output_index"], "item": item.model_dump(mode="json")}
        return [*events, ("response.output_item.done", done)]

    def _at(self) -> dict[str, Any]:
        return {"item_id": self.items[-1].id, "output_index": len(self.items) - 1}
