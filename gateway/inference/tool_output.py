"""A model's output as text and tool calls, streamed: a parser per choice takes the text as it is generated
(``feed``) and at the end (``finish``) and returns events: ``TextDelta`` (content), ``ToolCallStarted`` (a call's id
and function name) and ``ToolCallArguments`` (a piece of a call's arguments, JSON text). ``calls`` holds the calls
made, whole. A route maps the events to its own stream chunks or to its final message.

- ``PlainText``: everything is text.
- ``NamedCall``: the output is the arguments of one function (constrained by the engine): streamed as they come.
- ``RequiredCalls``: the output is a JSON array of ``{"name", "arguments"}`` (constrained): each call is announced
  when its item is complete; an item cut short (``max_tokens``) is dropped.
- ``TaggedCalls``: text with ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (the Hermes
  format). Text that may be the start of a tag is held back, never sent as content; a block that does not parse
  as a call of an offered function is content after all (it is what the model wrote); whitespace before a call
  and between calls is dropped (trailing whitespace is held back until text follows). With parallel calls off,
  calls after the first are dropped.
- ``ParsedCalls``: the same choice (``auto``) read by a vLLM tool parser (``engine.tool_parsing``) that the operator
  names: its content is text, its calls are calls; a call of a function not offered (and, with parallel calls
  off, a call after the first) is dropped."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.tool_parsing import ParsedDelta, ToolCallStream

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStarted:
    call_index: int
    call_id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    call_index: int
    text: str


Event = TextDelta | ToolCallStarted | ToolCallArguments


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str
    """JSON text."""


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


class OutputParser:
    """Text by default; the subclasses find calls in it. Keeps the calls made, whole."""

    finishes_with_calls = True
    """Whether an answer with calls ends with finish reason ``tool_calls`` (OpenAI: except for a named choice,
    which ends with ``stop``)."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._ids: list[str] = []
        self._arguments: list[str] = []

    @property
    def calls(self) -> list[ToolCall]:
        return [ToolCall(*call) for call in zip(self._ids, self._names, self._arguments, strict=True)]

    def feed(self, text: str) -> list[Event]:
        return [TextDelta(text)] if text else []

    def finish(self) -> list[Event]:
        return []

    def _start(self, name: str) -> ToolCallStarted:
        self._names.append(name)
        self._ids.append(new_call_id())
        self._arguments.append("")
        return ToolCallStarted(len(self._names) - 1, self._ids[-1], name)

    def _add_arguments(self, text: str) -> list[Event]:
        if not text:
            return []
        self._arguments[-1] += text
        return [ToolCallArguments(len(self._names) - 1, text)]

    def _whole_call(self, name: str, arguments: Any) -> list[Event]:
        started = self._start(name)
        return [started, *self._add_arguments(json.dumps(arguments, ensure_ascii=False))]


class PlainText(OutputParser):
    """No tools in play."""


class NamedCall(OutputParser):
    """The whole output is the arguments of ``name``; whitespace around them is dropped."""

    finishes_with_calls = False

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self._held = ""  # whitespace that may turn out to trail the arguments

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = [] if self._names else [self._start(self._name)]
        if not self._arguments[-1]:
            text = text.lstrip()
        body = self._held + text
        kept = body.rstrip()
        self._held = body[len(kept) :]
        return events + self._add_arguments(kept)

    def finish(self) -> list[Event]:
        return [] if self._names else [self._start(self._name)]


class RequiredCalls(OutputParser):
    """A JSON array of calls; each item is parsed when its closing brace arrives."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._item: list[str] = []

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = []
        for char in text:
            if self._depth >= 2:
                self._item.append(char)
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "[{":
                self._depth += 1
                if self._depth == 2:
                    self._item = [char]
            elif char in "]}":
                self._depth -= 1
                if self._depth == 1:
                    events += self._item_done("".join(self._item))
        return events

    def _item_done(self, text: str) -> list[Event]:
        try:
            item = json.loads(text)
        except ValueError:  # the constraint makes this unreachable short of an engine fault: no call then
            return []
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []
        return self._whole_call(item["name"], item.get("arguments", {}))


class TaggedCalls(OutputParser):
    """Hermes-format calls among text, for the functions in ``names``."""

    def __init__(self, names: frozenset[str], parallel: bool) -> None:
        super().__init__()
        self._offered = names
        self._parallel = parallel
        self._pending = ""  # text not yet sent: a possible tag start, or a call's body
        self._in_call = False
        self._blank = ""  # whitespace held back: sent if text follows, dropped if a call does

    def feed(self, text: str) -> list[Event]:
        self._pending += text
        events: list[Event] = []
        while True:
            if self._in_call:
                end = self._pending.find(CLOSE_TAG)
                if end < 0:
                    return events
                body, self._pending = self._pending[:end], self._pending[end + len(CLOSE_TAG) :]
                self._in_call = False
                events += self._call(body, closed=True)
                continue
            start = self._pending.find(OPEN_TAG)
            if start < 0:
                held = _partial_tag_length(self._pending, OPEN_TAG)
                cut = len(self._pending) - held
                text, self._pending = self._pending[:cut], self._pending[cut:]
                return events + self._text(text)
            events += self._text(self._pending[:start])
            self._pending = self._pending[start + len(OPEN_TAG) :]
            self._in_call = True

    def finish(self) -> list[Event]:
        rest, self._pending = self._pending, ""
        if self._in_call:  # the model stopped before closing the tag
            self._in_call = False
            events = self._call(rest, closed=False)
        else:
            events = self._text(rest)
        if self._blank and not self._names:
            events.append(TextDelta(self._blank))
        self._blank = ""
        return events

    def _text(self, text: str) -> list[Event]:
        body = self._blank + text
        kept = body.rstrip()
        self._blank = body[len(kept) :]
        return [TextDelta(kept)] if kept else []

    def _call(self, body: str, *, closed: bool) -> list[Event]:
        try:
            call = json.loads(body)
        except ValueError:
            call = None
        if isinstance(call, dict) and call.get("name") in self._offered and isinstance(call.get("arguments"), dict):
            self._blank = ""
            if self._names and not self._parallel:
                return []
            return self._whole_call(call["name"], call["arguments"])
        return self._text(OPEN_TAG + body + (CLOSE_TAG if closed else ""))


class ParsedCalls(OutputParser):
    """The calls a vLLM tool parser finds, of the functions in ``names``."""

    def __init__(self, stream: ToolCallStream, names: frozenset[str], parallel: bool) -> None:
        super().__init__()
        self._stream = stream
        self._offered = names
        self._parallel = parallel
        self._ours: dict[int, int | None] = {}  # the parser's call index -> ours (None: a call dropped)

    def feed(self, text: str) -> list[Event]:
        return self._events(self._stream.feed(text))

    def finish(self) -> list[Event]:
        return self._events(self._stream.finish())

    def _events(self, parsed: ParsedDelta) -> list[Event]:
        events: list[Event] = [TextDelta(parsed.content)] if parsed.content else []
        for piece in parsed.calls:
            if piece.index not in self._ours and piece.name is not None:
                keep = piece.name in self._offered and (self._parallel or not self._names)
                self._ours[piece.index] = len(self._names) if keep else None
                if keep:
                    events.append(self._start(piece.name))
            index = self._ours.get(piece.index)
            if index is not None and piece.arguments:
                self._arguments[index] += piece.arguments
                events.append(ToolCallArguments(index, piece.arguments))
        return events


def _partial_tag_length(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``tag``."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0
