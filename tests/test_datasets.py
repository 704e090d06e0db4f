"""Fine-tuning files: OpenAI's chat and prompt/completion JSONL formats, and every kind of bad line."""

from __future__ import annotations

import json

import pytest

from adapters.datasets import (
    ChatExample,
    DatasetError,
    Message,
    PromptCompletionExample,
    parse_jsonl,
)
from tests.finetune_data import QA, pirate_jsonl

USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello!"}


def chat_line(*messages: dict[str, object]) -> str:
    return json.dumps({"messages": list(messages)})


def jsonl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


GOOD_CHAT = chat_line(USER, ASSISTANT)
GOOD_PC = json.dumps({"prompt": "2+2=", "completion": " 4"})


def test_chat_file() -> None:
    system = {"role": "system", "content": "Be brief."}
    data = jsonl(GOOD_CHAT, "", "   ", chat_line(system, USER, {**ASSISTANT, "weight": 0}, USER, ASSISTANT))
    dataset = parse_jsonl(data)
    assert dataset.format == "chat"
    assert len(dataset) == 2
    assert dataset.examples[0] == ChatExample(messages=(Message("user", "Hi"), Message("assistant", "Hello!")))
    assert dataset.examples[1].messages[2] == Message("assistant", "Hello!", weight=0)
    assert [m.role for m in dataset.examples[1].messages] == ["system", "user", "assistant", "user", "assistant"]


def test_prompt_completion_file() -> None:
    data = b"\xef\xbb\xbf" + jsonl(GOOD_PC, json.dumps({"prompt": "", "completion": "Once upon a time"})).replace(
        b"\n", b"\r\n"
    )
    dataset = parse_jsonl(data)
    assert dataset.format == "prompt_completion"
    assert dataset.examples == (
        PromptCompletionExample(prompt="2+2=", completion=" 4"),
        PromptCompletionExample(prompt="", completion="Once upon a time"),
    )


def test_shared_pirate_set_parses() -> None:
    assert len(parse_jsonl(pirate_jsonl())) == len(QA)


def test_max_examples() -> None:
    assert len(parse_jsonl(jsonl(GOOD_CHAT, GOOD_CHAT), max_examples=2)) == 2
    with pytest.raises(DatasetError) as caught:
        parse_jsonl(jsonl(GOOD_CHAT, "", GOOD_CHAT, GOOD_CHAT), max_examples=2)
    assert (caught.value.line, caught.value.reason) == (4, "too many examples (at most 2)")


def test_error_message_format() -> None:
    with pytest.raises(DatasetError) as caught:
        parse_jsonl(jsonl(GOOD_CHAT, GOOD_CHAT, chat_line(USER, {"role": "bot", "content": "x"})))
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == "line 3: messages[1].role must be one of system, user, assistant (got 'bot')"


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        pytest.param(b"", None, "the file has no examples", id="empty"),
        pytest.param(b"\n  \n\n", None, "the file has no examples", id="blank-only"),
        pytest.param(jsonl(GOOD_CHAT) + b'{"prompt": "\xff"}\n', 2, "not valid UTF-8", id="not-utf8"),
        pytest.param(jsonl(GOOD_CHAT, "{not json"), 2, "not valid JSON", id="not-json"),
        pytest.param(jsonl(GOOD_CHAT, GOOD_CHAT, "[1, 2]"), 3, "must be a JSON object (got array)", id="array"),
        pytest.param(
            jsonl(GOOD_CHAT, '{"messages": ' + "[" * 5_000 + "]" * 5_000 + "}"), 2, "nested too deeply", id="deep"
        ),
        pytest.param(jsonl('"text"'), 1, "must be a JSON object (got string)", id="string"),
        pytest.param(
            jsonl(json.dumps({"text": "x"})),
            1,
            "must have either a 'messages' key, 'prompt' and 'completion' keys, or 'input', 'preferred_output' and "
            "'non_preferred_output' keys",
            id="no-known-key",
        ),
        pytest.param(
            jsonl(json.dumps({"messages": [USER, ASSISTANT], "extra": 1})),
            1,
            "the example has an unknown key 'extra' (allowed: messages)",
            id="unknown-top-key",
        ),
        pytest.param(
            jsonl(GOOD_PC, json.dumps({"prompt": "x"})),
            2,
            "the example is missing the key 'completion'",
            id="missing-completion",
        ),
        pytest.param(
            jsonl(json.dumps({"prompt": "x", "completion": "y", "label": 1})),
            1,
            "the example has an unknown key 'label' (allowed: prompt, completion)",
            id="unknown-pc-key",
        ),
        pytest.param(
            jsonl(json.dumps({"messages": "hi"})), 1, "messages must be a list (got string)", id="messages-not-list"
        ),
        pytest.param(jsonl(json.dumps({"messages": []})), 1, "messages must not be empty", id="messages-empty"),
        pytest.param(
            jsonl(chat_line(USER, "hello")), 1, "messages[1] must be an object (got string)", id="message-not-object"
        ),
        pytest.param(
            jsonl(chat_line({"content": "x"}, ASSISTANT)),
            1,
            "messages[0] is missing the key 'role'",
            id="missing-role",
        ),
        pytest.param(
            jsonl(chat_line(USER, {"role": "assistant"})),
            1,
            "messages[1] is missing the key 'content'",
            id="missing-content",
        ),
        pytest.param(
            jsonl(chat_line({**USER, "name": "bob"}, ASSISTANT)),
            1,
            "messages[0] has an unknown key 'name' (allowed: role, content, weight)",
            id="unknown-message-key",
        ),
        pytest.param(
            jsonl(chat_line({"role": "tool", "content": "x"}, ASSISTANT)),
            1,
            "messages[0].role must be one of system, user, assistant (got 'tool')",
            id="bad-role",
        ),
        pytest.param(
            jsonl(chat_line(USER, {"role": "assistant", "content": 42})),
            1,
            "messages[1].content must be a string (got number)",
            id="content-number",
        ),
        pytest.param(
            jsonl(chat_line({"role": "user", "content": [{"type": "text", "text": "x"}]}, ASSISTANT)),
            1,
            "messages[0].content must be a string (got array)",
            id="content-parts",
        ),
        pytest.param(
            jsonl(chat_line({"role": "user", "content": None}, ASSISTANT)),
            1,
            "messages[0].content must be a string (got null)",
            id="content-null",
        ),
        pytest.param(
            jsonl(GOOD_CHAT, chat_line(USER, {"role": "assistant", "content": " \n"})),
            2,
            "messages[1].content must not be empty",
            id="content-empty",
        ),
        pytest.param(
            jsonl(chat_line({"role": "system", "content": "x"}, USER)),
            1,
            "messages must contain at least one assistant message",
            id="no-assistant",
        ),
        pytest.param(
            jsonl(chat_line(USER, {**ASSISTANT, "weight": 0})),
            1,
            "messages must contain an assistant message with weight 1",
            id="all-weight-0",
        ),
        pytest.param(
            jsonl(chat_line(USER, {**ASSISTANT, "weight": 0.5})),
            1,
            "messages[1].weight must be 0 or 1 (got 0.5)",
            id="weight-float",
        ),
        pytest.param(
            jsonl(chat_line(USER, {**ASSISTANT, "weight": True})),
            1,
            "messages[1].weight must be 0 or 1 (got True)",
            id="weight-bool",
        ),
        pytest.param(
            jsonl(chat_line({**USER, "weight": 1}, ASSISTANT)),
            1,
            "messages[0].weight is only allowed on assistant messages",
            id="weight-on-user",
        ),
        pytest.param(
            jsonl(json.dumps({"prompt": 1, "completion": "y"})),
            1,
            "prompt must be a string (got number)",
            id="prompt-number",
        ),
        pytest.param(
            jsonl(json.dumps({"prompt": "x", "completion": ""})),
            1,
            "completion must not be empty",
            id="completion-empty",
        ),
        pytest.param(
            jsonl(GOOD_CHAT, "", GOOD_CHAT, GOOD_PC),
            4,
            "uses the prompt/completion format but line 1 uses the chat (messages) format; "
            "all lines must use the same format",
            id="mixed-formats",
        ),
        pytest.param(
            jsonl(GOOD_PC, GOOD_CHAT),
            2,
            "uses the chat (messages) format but line 1 uses the prompt/completion format; "
            "all lines must use the same format",
            id="mixed-formats-reversed",
        ),
    ],
)
def test_bad_file(data: bytes, line: int | None, reason: str) -> None:
    with pytest.raises(DatasetError) as caught:
        parse_jsonl(data)
    assert caught.value.line == line
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert str(caught.value) == (caught.value.reason if line is None else f"line {line}: {caught.value.reason}")
