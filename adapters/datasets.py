"""Fine-tuning datasets: parsing and validating OpenAI's JSONL training files (pure Python, no torch).

Three formats, one per file:

* chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "...", "weight": 0|1}, ...]}`` with at
  least one assistant message to train on (``weight`` is optional, assistant messages only, default 1);
* prompt/completion: ``{"prompt": "...", "completion": "..."}`` (the prompt may be empty, the completion not);
* preference (DPO): ``{"input": {"messages": [...], "parallel_tool_calls"?: bool}, "preferred_output": [{"role":
  "assistant", "content": "..."}], "non_preferred_output": [{...}]}``: the conversation so far (its messages as in
  chat, without ``weight``, ending with a user message) and two answers to it, the better one first. Function
  ``tools`` are refused: training does not render them into the prompt.

Blank lines are skipped. Every problem raises :class:`DatasetError` naming the (1-based) line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, NamedTuple, TypeAlias

Role: TypeAlias = Literal["system", "user", "assistant"]
Format: TypeAlias = Literal["chat", "prompt_completion", "preference"]

ROLES: tuple[Role, ...] = ("system", "user", "assistant")
_MESSAGE_KEYS = ("role", "content", "weight")
_FORMAT_NAMES: dict[Format, str] = {
    "chat": "chat (messages)",
    "prompt_completion": "prompt/completion",
    "preference": "preference (input, preferred_output, non_preferred_output)",
}
_PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
MAX_LINE_BYTES = 1024 * 1024
"""An uploaded example may be this long; training sees at most a few thousand tokens of it anyway."""


class DatasetError(ValueError):
    """A training file that cannot be used; ``line`` is 1-based, or None for the file as a whole."""

    def __init__(self, line: int | None, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(reason if line is None else f"line {line}: {reason}")


class Message(NamedTuple):
    """One chat message; ``weight`` 0 keeps an assistant message out of the loss (OpenAI's ``weight``)."""

    role: Role
    content: str
    weight: Literal[0, 1] = 1


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class PromptCompletionExample:
    prompt: str
    completion: str


@dataclass(frozen=True)
class PreferenceExample:
    """A conversation (``messages``, ending with the user's turn) and two answers to it, ``preferred`` the better."""

    messages: tuple[Message, ...]
    preferred: str
    non_preferred: str

    def pair(self) -> tuple[ChatExample, ChatExample]:
        """The conversation ending with each answer, trained on that answer only (earlier assistant turns are
        context): the preferred one first."""
        context = tuple(m._replace(weight=0) if m.role == "assistant" else m for m in self.messages)
        preferred, non_preferred = (
            ChatExample(messages=(*context, Message("assistant", answer)))
            for answer in (self.preferred, self.non_preferred)
        )
        return preferred, non_preferred


Example: TypeAlias = ChatExample | PromptCompletionExample | PreferenceExample


@dataclass(frozen=True)
class Dataset:
    format: Format
    examples: tuple[Example, ...]

    def __len__(self) -> int:
        return len(self.examples)


_METHOD_FORMATS: dict[str, tuple[Format, ...]] = {
    "supervised": ("chat", "prompt_completion"),
    "dpo": ("preference",),
}


def format_problem(method: str, found: Format) -> str | None:
    """Why a file of ``found`` examples cannot train a job of ``method`` ("supervised" or "dpo"), or None."""
    wanted = _METHOD_FORMATS[method]
    if found in wanted:
        return None
    names = " or ".join(_FORMAT_NAMES[name] for name in wanted)
    return f"it holds {_FORMAT_NAMES[found]} examples, and a {method} job trains on {names} examples"


def parse_jsonl(data: bytes, *, max_examples: int | None = None) -> Dataset:
    """The examples of a JSONL training file, all in one format; raises :class:`DatasetError`."""
    examples = list(iter_examples(data.split(b"\n"), max_examples=max_examples))
    return Dataset(format=format_of(examples[0]), examples=tuple(examples))


def check_jsonl(handle: BinaryIO, *, max_line_bytes: int = MAX_LINE_BYTES) -> int:
    """Validate a training file as it is read, one line in memory at a time; returns the number of examples."""

    def lines() -> Iterator[bytes]:
        number = 0
        while line := handle.readline(max_line_bytes + 1):
            number += 1
            if len(line.rstrip(b"\r\n")) > max_line_bytes:
                raise DatasetError(number, f"longer than {max_line_bytes} bytes")
            yield line

    return sum(1 for _ in iter_examples(lines()))


def iter_examples(lines: Iterable[bytes], *, max_examples: int | None = None) -> Iterator[Example]:
    """Parse and check line by line: every line one example (blank lines skipped), all in one format."""
    file_format: Format | None = None
    first_line = 0
    count = 0
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise DatasetError(number, "not valid UTF-8") from None
        if not text.strip():
            continue
        if max_examples is not None and count >= max_examples:
            raise DatasetError(number, f"too many examples (at most {max_examples})")
        example = _parse_line(number, text)
        line_format = format_of(example)
        if file_format is None:
            file_format, first_line = line_format, number
        elif line_format != file_format:
            raise DatasetError(
                number,
                f"uses the {_FORMAT_NAMES[line_format]} format but line {first_line} uses the "
                f"{_FORMAT_NAMES[file_format]} format; all lines must use the same format",
            )
        count += 1
        yield example
    if file_format is None:
        raise DatasetError(None, "the file has no examples")


def format_of(example: Example) -> Format:
    if isinstance(example, PreferenceExample):
        return "preference"
    return "chat" if isinstance(example, ChatExample) else "prompt_completion"


def _parse_line(number: int, raw: str) -> Example:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # the parser's own bound on nesting; what parses is then checked shape by shape
        raise DatasetError(number, "nested too deeply (an example is an object of strings and messages)") from None
    if not isinstance(obj, dict):
        raise DatasetError(number, f"must be a JSON object (got {_type_name(obj)})")
    if "messages" in obj:
        _check_keys(number, "the example", obj, allowed=("messages",), required=("messages",))
        return ChatExample(messages=_parse_messages(number, obj["messages"]))
    if "input" in obj:
        _check_keys(number, "the example", obj, allowed=_PREFERENCE_KEYS, required=_PREFERENCE_KEYS)
        return _parse_preference(number, obj)
    if "prompt" in obj or "completion" in obj:
        _check_keys(number, "the example", obj, allowed=("prompt", "completion"), required=("prompt", "completion"))
        prompt = _string(number, "prompt", obj["prompt"], allow_empty=True)
        completion = _string(number, "completion", obj["completion"], allow_empty=False)
        return PromptCompletionExample(prompt=prompt, completion=completion)
    raise DatasetError(
        number,
        "must have either a 'messages' key, 'prompt' and 'completion' keys, or 'input', 'preferred_output' and "
        "'non_preferred_output' keys",
    )


def _parse_preference(number: int, obj: dict[str, Any]) -> PreferenceExample:
    conversation = obj["input"]
    if not isinstance(conversation, dict):
        raise DatasetError(number, f"input must be an object (got {_type_name(conversation)})")
    if "tools" in conversation:
        raise DatasetError(number, "input.tools is not supported here (training does not render tools)")
    _check_keys(number, "input", conversation, allowed=("messages", "parallel_tool_calls"), required=("messages",))
    if not isinstance(conversation.get("parallel_tool_calls", False), bool):
        raise DatasetError(number, "input.parallel_tool_calls must be a boolean")
    messages = _message_list(number, "input.messages", conversation["messages"], weights=False)
    if messages[-1].role != "user":
        raise DatasetError(number, "input.messages must end with a user message (the answers follow it)")
    preferred = _output(number, "preferred_output", obj["preferred_output"])
    non_preferred = _output(number, "non_preferred_output", obj["non_preferred_output"])
    if preferred == non_preferred:
        raise DatasetError(number, "preferred_output and non_preferred_output must differ")
    return PreferenceExample(messages=messages, preferred=preferred, non_preferred=non_preferred)


def _output(number: int, where: str, value: Any) -> str:
    """The text of a one-message assistant answer (``[{"role": "assistant", "content": "..."}]``)."""
    if not isinstance(value, list) or len(value) != 1:
        raise DatasetError(number, f"{where} must be a list of exactly one assistant message")
    (message,) = _message_list(number, where, value, weights=False)
    if message.role != "assistant":
        raise DatasetError(number, f"{where}[0].role must be assistant (got {message.role!r})")
    return message.content


def _parse_messages(number: int, value: Any) -> tuple[Message, ...]:
    messages = _message_list(number, "messages", value, weights=True)
    assistant_weights = [message.weight for message in messages if message.role == "assistant"]
    if not assistant_weights:
        raise DatasetError(number, "messages must contain at least one assistant message")
    if not any(assistant_weights):
        raise DatasetError(number, "messages must contain an assistant message with weight 1")
    return messages


def _message_list(number: int, name: str, value: Any, *, weights: bool) -> tuple[Message, ...]:
    """A non-empty list of messages (``weight`` allowed on assistant messages when ``weights``)."""
    if not isinstance(value, list):
        raise DatasetError(number, f"{name} must be a list (got {_type_name(value)})")
    if not value:
        raise DatasetError(number, f"{name} must not be empty")
    allowed = _MESSAGE_KEYS if weights else _MESSAGE_KEYS[:2]
    messages: list[Message] = []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            raise DatasetError(number, f"{where} must be an object (got {_type_name(item)})")
        _check_keys(number, where, item, allowed=allowed, required=("role", "content"))
        role = item["role"]
        if role not in ROLES:
            raise DatasetError(number, f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})")
        content = _string(number, f"{where}.content", item["content"], allow_empty=False)
        weight = item.get("weight", 1)
        if "weight" in item and role != "assistant":
            raise DatasetError(number, f"{where}.weight is only allowed on assistant messages")
        if type(weight) is not int or weight not in (0, 1):
            raise DatasetError(number, f"{where}.weight must be 0 or 1 (got {weight!r})")
        messages.append(Message(role=role, content=content, weight=1 if weight else 0))
    return tuple(messages)


def _check_keys(
    number: int, where: str, obj: dict[str, Any], *, allowed: tuple[str, ...], required: tuple[str, ...]
) -> None:
    for key in obj:
        if key not in allowed:
            raise DatasetError(number, f"{where} has an unknown key {key!r} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in obj:
            raise DatasetError(number, f"{where} is missing the key {key!r}")


def _string(number: int, where: str, value: Any, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise DatasetError(number, f"{where} must be a string (got {_type_name(value)})")
    if not allow_empty and not value.strip():
        raise DatasetError(number, f"{where} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(number, f"{where} holds a lone surrogate escape (not valid text)") from None
    return value


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
