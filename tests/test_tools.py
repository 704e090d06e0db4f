"""Function tools on chat completions: the output parsers on crafted text (split anywhere), the Hermes-format
``auto`` path end to end on a scripted engine, and the real SmolLM2 on vLLM through the official SDK for the
choices structured decoding enforces (named, ``required``), ``none``, a round trip with the tool's result, exact
usage, and hostile requests."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import ValidationError

from engine.fake import FakeEngine
from engine.protocol import CompletionDelta
from engine.settings import EngineSettings
from engine.tokenizer import HFTokenizer
from engine.tool_parsing import ToolCallStream
from gateway.inference.tool_output import (
    Event,
    NamedCall,
    OutputParser,
    ParsedCalls,
    RequiredCalls,
    TaggedCalls,
    TextDelta,
    ToolCall,
    ToolCallArguments,
    ToolCallStarted,
)
from gateway.inference.tools import Turn, check_history, fallback_system_text, template_messages
from tests.support import MODEL, REPO
from tests.support.gateway_process import SERVE, gateway_env, served_gateway
from tests.support.in_process import InProcessGateway
from tests.support.tenants import openai_client, tenant_key

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather", "parameters": WEATHER_PARAMS},
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time", "parameters": TIME_PARAMS}}
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def _run(parser: OutputParser, pieces: list[str]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish()


def _splits(text: str) -> list[list[str]]:
    """The text whole, one character at a time, and cut in two at every position."""
    return [[text], list(text)] + [[text[:cut], text[cut:]] for cut in range(1, len(text))]


def _text(events: list[Event]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


# --- the parsers, on crafted text -------------------------------------------------------------------------------


def test_tagged_calls_split_anywhere_never_leak_a_tag() -> None:
    output = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    output += '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>'
    for pieces in _splits(output):
        parser = TaggedCalls(frozenset(SCHEMAS), parallel=True)
        events = _run(parser, pieces)
        assert _text(events) == "Let me look.", pieces
        assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [
            ("get_weather", {"city": "Paris"}),
            ("get_time", {"zone": "UTC"}),
        ]
        started = [e for e in events if isinstance(e, ToolCallStarted)]
        assert [(e.call_index, e.name) for e in started] == [(0, "get_weather"), (1, "get_time")]
        assert all(e.call_id.startswith("call_") for e in started)
        for index, call in enumerate(parser.calls):
            pieces_of = [e.text for e in events if isinstance(e, ToolCallArguments) and e.call_index == index]
            assert "".join(pieces_of) == call.arguments


def test_tagged_text_that_only_looks_like_a_tag_is_content() -> None:
    for output in (
        "a < b and <tool_ca",
        "x <tool_call>not json</tool_call> y",
        'z <tool_call>{"name": "rm", "arguments": {}}',
    ):
        for pieces in _splits(output):
            parser = TaggedCalls(frozenset(SCHEMAS), parallel=True)
            assert _text(_run(parser, pieces)) == output and not parser.calls, pieces


def test_tagged_unclosed_call_at_the_end_and_parallel_off() -> None:
    output = '<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>\n'
    output += '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}'
    parser = TaggedCalls(frozenset(SCHEMAS), parallel=False)
    assert _text(_run(parser, [output])) == ""
    assert [json.loads(c.arguments) for c in parser.calls] == [{"zone": "CET"}]
    parser = TaggedCalls(frozenset(SCHEMAS), parallel=True)
    _run(parser, list(output))
    assert [json.loads(c.arguments) for c in parser.calls] == [{"zone": "CET"}, {"zone": "UTC"}]


def test_required_and_named_parsers() -> None:
    output = ' [{"name": "get_time", "arguments": {"zone": "a}]\\"{"}}, {"name":"get_weather","arguments":{}}]\n'
    for pieces in _splits(output):
        parser = RequiredCalls()
        events = _run(parser, pieces)
        assert _text(events) == ""
        assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [
            ("get_time", {"zone": 'a}]"{'}),
            ("get_weather", {}),
        ]
    cut_short = RequiredCalls()
    _run(cut_short, ['[{"name": "get_time", "arguments": {"zone": "U'])
    assert cut_short.calls == []
    for pieces in _splits('\n {"city": "Paris"} \n'):
        named = NamedCall("get_weather")
        events = _run(named, pieces)
        assert isinstance(events[0], ToolCallStarted) and events[0].name == "get_weather"
        assert [c.arguments for c in named.calls] == ['{"city": "Paris"}']


def test_a_vllm_parser_through_the_adapter_split_anywhere(model_dir: Path) -> None:
    """``LLMAAS_TOOL_CALL_PARSER=hermes``: vLLM's Hermes parser reads what ours reads, however the text is cut."""
    tokenizer = HFTokenizer(model_dir)
    output = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    output += '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>'

    def parsed(parallel: bool, tools: tuple[dict[str, Any], ...] = (WEATHER, TIME)) -> ParsedCalls:
        return ParsedCalls(ToolCallStream("hermes", tokenizer, tools), frozenset(SCHEMAS), parallel)

    for pieces in _splits(output):
        parser = parsed(parallel=True)
        events = _run(parser, pieces)
        assert _text(events).strip() == "Let me look.", pieces
        ours = TaggedCalls(frozenset(SCHEMAS), parallel=True)
        _run(ours, pieces)
        assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [
            (c.name, json.loads(c.arguments)) for c in ours.calls
        ]
        started = [e for e in events if isinstance(e, ToolCallStarted)]
        assert [(e.call_index, e.name) for e in started] == [(0, "get_weather"), (1, "get_time")]
        assert all(e.call_id.startswith("call_") for e in started)
        for index, call in enumerate(parser.calls):
            pieces_of = [e.text for e in events if isinstance(e, ToolCallArguments) and e.call_index == index]
            assert "".join(pieces_of) == call.arguments
    single = parsed(parallel=False)
    _run(single, list(output))
    assert [c.name for c in single.calls] == ["get_weather"]
    unknown = parsed(parallel=True)  # a function not offered: vLLM's parser reports it, the adapter drops it
    _run(unknown, ['<tool_call>{"name": "rm", "arguments": {}}</tool_call>', output[output.index("<") :]])
    assert [c.name for c in unknown.calls] == ["get_weather", "get_time"]


def test_an_unknown_parser_name_fails_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"vLLM has no tool call parser named 'hermes2'; its parsers: .*hermes"):
        EngineSettings(tool_call_parser="hermes2")
    assert EngineSettings(tool_call_parser="llama3_json").tool_call_parser == "llama3_json"
    env = gateway_env(tmp_path, tool_call_parser="hermes2")
    started = subprocess.run([*SERVE, "--port", "0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode != 0
    assert "vLLM has no tool call parser named 'hermes2'" in started.stdout + started.stderr


def test_history_rules_and_fallback_rendering() -> None:
    call = ToolCall("call_1", "get_time", '{"zone": "UTC"}')
    asked = Turn("user", "time?")
    called = Turn("assistant", "", (call,))
    answered = Turn("tool", "12:00", tool_call_id="call_1")
    check_history([asked, called, answered, Turn("assistant", "noon")], "messages")
    for turns, param in (
        ([asked, answered], "messages[1].tool_call_id"),
        ([asked, called], "messages[1]"),
        ([asked, called, Turn("user", "well?")], "messages[1]"),
        ([asked, called, answered, Turn("tool", "again", tool_call_id="call_1")], "messages[3].tool_call_id"),
    ):
        with pytest.raises(Exception) as info:
            check_history(turns, "messages")
        assert getattr(info.value, "param", None) == param
    tools = [TIME]
    messages = template_messages(
        [asked, called, answered], renders_tools=False, system_text=fallback_system_text(tools, True)
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert '"name": "get_time"' in messages[0]["content"] and "<tool_call>" in messages[0]["content"]
    assert messages[2]["content"] == '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'
    assert messages[3]["content"] == "<tool_response>\n12:00\n</tool_response>"
    native = template_messages([asked, called, answered], renders_tools=True, system_text=None)
    assert native[1]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": {"zone": "UTC"}}
    assert native[2] == {"role": "tool", "content": "12:00", "tool_call_id": "call_1", "name": "get_time"}


# --- auto, end to end on a scripted engine -----------------------------------------------------------------------


class ScriptedEngine(FakeEngine):
    """Answers every request with ``reply``, ``step`` characters a token."""

    def __init__(self, reply: str, step: int = 3) -> None:
        super().__init__()
        self.reply, self.step = reply, step
        self.prompts: list[str] = []

    async def generate(
        self, prompt_token_ids: list[int], *rest: Any, **options: Any
    ) -> AsyncIterator[list[CompletionDelta]]:
        self.prompts.append(self.tokenizer.decode(prompt_token_ids))
        pieces = [self.reply[i : i + self.step] for i in range(0, len(self.reply), self.step)]
        for position, piece in enumerate(pieces):
            finish = "stop" if position == len(pieces) - 1 else None
            yield [CompletionDelta(0, piece, list(piece.encode()), [], finish)]


SCRIPTED = (
    'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}}\n</tool_call>'
)


def test_auto_parses_hermes_calls_streamed_and_not(in_process: Callable[..., InProcessGateway]) -> None:
    engine = ScriptedEngine(SCRIPTED)
    client = in_process(engine).tenant()[2]
    reply = client.chat.completions.create(model="fake", messages=ASK, tools=[WEATHER, TIME], max_tokens=200)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "city": "Tokyo",
        "unit": "celsius",
    }
    # The fallback rendered the tools into the system prompt (the fake tokenizer's template has no tools).
    assert "<tools>" in engine.prompts[-1] and '"name": "get_time"' in engine.prompts[-1]

    chunks = list(
        client.chat.completions.create(model="fake", messages=ASK, tools=[WEATHER], max_tokens=200, stream=True)
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == "Checking." and "<" not in content
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert calls[0][0].id.startswith("call_") and calls[0][0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    plain = client.chat.completions.create(
        model="fake", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=200
    )
    assert plain.choices[0].message.content == SCRIPTED and plain.choices[0].message.tool_calls is None
    assert "<tools>" not in engine.prompts[-1]  # none: the tools are not offered to the model


# --- the real model ----------------------------------------------------------------------------------------------


def _check_calls(calls: list[Any], names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_choice_is_enforced(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=NAMED, max_tokens=40, temperature=0
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content is None  # OpenAI's for a named choice
    _check_calls(choice.message.tool_calls or [], {"get_weather"})
    assert len(choice.message.tool_calls or []) == 1


def test_named_choice_streams_in_openai_shape(client: openai.OpenAI, http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": NAMED, "max_tokens": 40, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json={**body, "temperature": 0}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks[1:]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    first, rest = calls[0], calls[1:]
    assert first == {
        "index": 0,
        "id": first["id"],
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert rest and all(set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in rest)
    arguments = "".join(c["function"]["arguments"] for c in rest)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)
    assert all("content" not in d for d in deltas)
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}

    with client.chat.completions.stream(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED, max_tokens=40
    ) as stream:
        final = stream.get_final_completion()
    _check_calls(final.choices[0].message.tool_calls or [], {"get_weather"})


def test_required_choice_is_enforced(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required"}
    single = client.chat.completions.create(**kwargs, parallel_tool_calls=False, max_tokens=60, temperature=0)
    assert single.choices[0].finish_reason == "tool_calls" and len(single.choices[0].message.tool_calls or []) == 1
    _check_calls(single.choices[0].message.tool_calls or [], set(SCHEMAS))
    # Parallel calls, streamed, n = 2: every complete item is a call whose arguments validate (one cut short by
    # max_tokens is dropped). Raw chunks: the SDK's stream helper raises when a choice ends by length, which a
    # small model repeating calls may well do.
    calls: dict[tuple[int, int], dict[str, str]] = {}
    for chunk in client.chat.completions.create(**kwargs, max_tokens=60, n=2, seed=3, temperature=1.0, stream=True):
        for streamed in chunk.choices:
            for delta in streamed.delta.tool_calls or []:
                call = calls.setdefault((streamed.index, delta.index), {"arguments": ""})
                if delta.id is not None:
                    assert delta.function is not None and delta.type == "function"
                    call |= {"id": delta.id, "name": delta.function.name or ""}
                call["arguments"] += delta.function.arguments or "" if delta.function else ""
    assert {choice for choice, _ in calls} == {0, 1}
    for call in calls.values():
        assert call["id"].startswith("call_") and call["name"] in SCHEMAS
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_round_trip_with_the_tool_result_and_exact_usage(client: openai.OpenAI, hf_tokenizer: Any) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=40, temperature=0
    )
    message = first.choices[0].message
    [call] = message.tool_calls or []
    history = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 degrees, sunny"},
    ]
    second = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], max_tokens=24, temperature=0, logprobs=True
    )
    answer = second.choices[0]
    assert answer.message.content or answer.message.tool_calls
    # The prompt is exactly what the fallback renders: tools in the system prompt, the call, its result.
    turns = [
        Turn("user", ASK[0]["content"]),
        Turn("assistant", "", (ToolCall(call.id, call.function.name, call.function.arguments),)),
        Turn("tool", "22 degrees, sunny", tool_call_id=call.id),
    ]
    offered = [{"type": "function", "function": WEATHER["function"]}]
    messages = template_messages(turns, renders_tools=False, system_text=fallback_system_text(offered, True))
    rendered = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert second.usage.prompt_tokens == len(hf_tokenizer.encode(rendered, add_special_tokens=False))
    assert second.usage.completion_tokens == len(answer.logprobs.content)
    plain = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=24, temperature=0
    )
    assert plain.usage.prompt_tokens < second.usage.prompt_tokens  # none: the tools are not rendered


def test_streamed_usage_equals_the_answer(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": NAMED,
        "max_tokens": 40,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.model_dump() == whole.usage.model_dump()


@pytest.fixture(scope="module")
def hermes_client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    """A second real gateway, the same as the session's but with ``LLMAAS_TOOL_CALL_PARSER=hermes``."""
    data_dir = tmp_path_factory.mktemp("hermes-gateway")
    settings: dict[str, Any] = {"kv_cache_space_gib": 1, "log_level": "warning", "dtype": "float32"}
    settings["embedding_model"] = ""  # the chat model alone
    with served_gateway(data_dir, model_path=model_dir, tool_call_parser="hermes", **settings) as gateway:
        yield openai_client(gateway.base, tenant_key(gateway.base)[1])


def _asked_again(times: int) -> list[dict[str, Any]]:
    """The weather in Paris asked ``times`` times, each answered through a call, then asked once more: after three,
    SmolLM2 answers with a Hermes call itself (greedy)."""
    history: list[dict[str, Any]] = []
    for index in range(times):
        call = {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}
        history += [
            *ASK,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": f"call_{index}", "type": "function", "function": call}],
            },
            {"role": "tool", "tool_call_id": f"call_{index}", "content": "22 degrees, sunny"},
            {"role": "assistant", "content": "22 degrees, sunny."},
        ]
    return [*history, *ASK]


@pytest.mark.slow  # a second real gateway (~2 minutes); the parser itself is checked on scripted text above
def test_auto_through_vllms_hermes_parser_on_the_real_model(
    client: openai.OpenAI, hermes_client: openai.OpenAI
) -> None:
    """The real model's own Hermes call, read by vLLM's parser, as ours reads it; plain text stays text; the named
    choice is unchanged."""
    kwargs: dict[str, Any] = {"model": MODEL, "tools": [WEATHER, TIME], "max_tokens": 40, "temperature": 0}
    asked = _asked_again(3)
    theirs = hermes_client.chat.completions.create(messages=asked, **kwargs).choices[0]
    ours = client.chat.completions.create(messages=asked, **kwargs).choices[0]
    assert theirs.finish_reason == ours.finish_reason == "tool_calls"
    assert (theirs.message.content or "").strip() == (ours.message.content or "").strip()
    _check_calls(theirs.message.tool_calls or [], set(SCHEMAS))
    assert [(c.function.name, json.loads(c.function.arguments)) for c in theirs.message.tool_calls or []] == [
        (c.function.name, json.loads(c.function.arguments)) for c in ours.message.tool_calls or []
    ]

    chunks = list(hermes_client.chat.completions.create(messages=asked, stream=True, **kwargs))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert "<" not in "".join(delta.content or "" for delta in deltas)
    pieces = [call for delta in deltas for call in delta.tool_calls or []]
    assert pieces[0].id.startswith("call_") and pieces[0].type == "function"
    assert pieces[0].function.name == "get_weather" and all(piece.index == 0 for piece in pieces)
    assert (
        "".join(piece.function.arguments or "" for piece in pieces) == theirs.message.tool_calls[0].function.arguments
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    text = hermes_client.chat.completions.create(messages=ASK, **kwargs).choices[0]
    assert text.message.tool_calls is None and text.finish_reason in ("stop", "length")
    assert text.message.content == client.chat.completions.create(messages=ASK, **kwargs).choices[0].message.content
    named = hermes_client.chat.completions.create(messages=ASK, tool_choice=NAMED, **kwargs).choices[0]
    assert named.finish_reason == "stop"
    _check_calls(named.message.tool_calls or [], {"get_weather"})


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": NAMED}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 12}}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "http://x/y"}}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"enum": ["a" * 70_000]}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [WEATHER] * 129}, "tools"),
        ({"functions": [WEATHER["function"]]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]}, "messages[1].tool_call_id"),
        ({"messages": [*ASK, {"role": "tool", "content": "1"}]}, "messages[1].tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}, *ASK]}, None),
        (
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                        ],
                    },
                ]
            },
            "messages[1]",
        ),
        (
            {"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}, *ASK]},
            "messages[0].function_call",
        ),
    ],
)
def test_hostile_tool_requests_are_400_naming_the_param(
    http: httpx.Client, overrides: dict[str, Any], param: str | None
) -> None:
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 4, **overrides})
    if param is None:  # harmless: an empty list of calls
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
