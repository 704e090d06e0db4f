"""Fine-tuning datasets: parsing and validating OpenAI's JSONL training files (pure Python, no torch).

Two formats, one per file:

* chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "...", "weight": 0|1}, ...]}`` with at
  least one assistant message to train on (``weight`` is optional, assistant messages only, default 1);
* prompt/completion: ``{"prompt": "...", "completion": "..."}`` (the prompt may be empty, the completion not).

Blank lines are skipped. Every problem raises :class:`DatasetError` naming the (1-based) line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, NamedTuple, TypeAlias

Role: TypeAlias = Literal["system", "user", "assistant"]
Format: TypeAlias = Literal["chat", "prompt_completion"]

ROLES: tuple[Role, ...] = ("system", "user", "assistant")
_MESSAGE_KEYS = ("role", "content", "weight")
_FORMAT_NAMES: dict[Format, str] = {"chat": "chat (messages)", "prompt_completion": "prompt/completion"}
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


Example: TypeAlias = ChatExample | PromptCompletionExample


@dataclass(frozen=True)
class Dataset:
    format: Format
    examples: tuple[Example, ...]

    def __len__(self) -> int:
        return len(self.examples)


def parse_jsonl(data: bytes, *, max_examples: int | None = None) -> Dataset:
    """The examples of a JSONL training file, all in one format; raises :class:`DatasetError`."""
    examples = list(iter_examples(data.split(b"\n"), max_examples=max_examples))
    return Dataset(format=_format_of(examples[0]), examples=tuple(examples))


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
        line_format = _format_of(example)
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


def _format_of(example: Example) -> Format:
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
    if "prompt" in obj or "completion" in obj:
        _check_keys(number, "the example", obj, allowed=("prompt", "completion"), required=("prompt", "completion"))
        prompt = _string(number, "prompt", obj["prompt"], allow_empty=True)
        completion = _string(number, "completion", obj["completion"], allow_empty=False)
        return PromptCompletionExample(prompt=prompt, completion=completion)
    raise DatasetError(number, "must have either a 'messages' key or 'prompt' and 'completion' keys")


def _parse_messages(number: int, value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list):
        raise DatasetError(number, f"messages must be a list (got {_type_name(value)})")
    if not value:
        raise DatasetError(number, "messages must not be empty")
    messages: list[Message] = []
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise DatasetError(number, f"{where} must be an object (got {_type_name(item)})")
        _check_keys(number, where, item, allowed=_MESSAGE_KEYS, required=("role", "content"))
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
    assistant_weights = [message.weight for message in messages if message.role == "assistant"]
    if not assistant_weights:
        raise DatasetError(number, "messages must contain at least one assistant message")
    if not any(assistant_weights):
        raise DatasetError(number, "messages must contain an assistant message with weight 1")
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
