"""The Responses API (``/v1/responses``) through the official ``openai`` client: against the real SmolLM2 on vLLM
(answers, structured output, streamed events in order, the stored conversation and its continuation, usage equal
to the ledger, a gateway restart on PostgreSQL), and on the instant fake engine where only the gateway's logic is
under test (chain bounds, truncation, retention, erasure, export)."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from engine.fake import FakeEngine
from gateway.audit import Actor
from gateway.clock import utcnow
from gateway.db import Database, StoredResponse
from gateway.retention import Retention
from tests.support import MODEL
from tests.support.databases import fresh_postgres_database, ledger_rows
from tests.support.gateway_process import served_gateway
from tests.support.in_process import BreakingEngine, InProcessGateway
from tests.support.tenants import create_tenant, openai_client, tenant_key

QUESTION = "What is the capital of France?"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Berlin"]}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city", "parameters": CITY}
STREAM_ORDER_HEAD = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
STREAM_ORDER_TAIL = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def _prompt_tokens(hf_tokenizer: Any, messages: list[dict[str, str]]) -> int:
    rendered = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(hf_tokenizer.encode(rendered, add_special_tokens=False))


def _check_response(response: Any) -> None:
    """OpenAI's response object around one output message."""
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete")
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    [part] = message.content
    assert part.type == "output_text" and part.annotations == []
    usage = response.usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0 and usage.output_tokens_details.reasoning_tokens == 0


# -- a restart: gateway A stores, gateway B on the same database continues (one real engine at a time) --------------
@pytest.mark.slow  # two real engines one after the other: `make test-slow`
def test_a_stored_response_outlives_its_gateway(model_dir: Path, tmp_path: Path, hf_tokenizer: Any) -> None:
    with fresh_postgres_database("llmaas_responses") as url:
        settings: dict[str, Any] = {"model_path": model_dir, "kv_cache_space_gib": 1, "dtype": "float32"}
        settings |= {"database_url": url, "log_level": "warning", "embedding_model": ""}  # the chat model alone
        with served_gateway(tmp_path / "a", log=tmp_path / "a.log", **settings) as a:
            _, key = tenant_key(a.base)
            first = openai_client(a.base, key).responses.create(
                model=MODEL, input=QUESTION, max_output_tokens=16, temperature=0
            )
        with served_gateway(tmp_path / "b", log=tmp_path / "b.log", **settings) as b:
            client = openai_client(b.base, key)
            assert client.responses.retrieve(first.id).output_text == first.output_text
            second = client.responses.create(
                model=MODEL, input="And of Italy?", previous_response_id=first.id, max_output_tokens=16, temperature=0
            )
    conversation = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert second.usage.input_tokens == _prompt_tokens(hf_tokenizer, conversation)


# -- the real model ------------------------------------------------------------------------------------------------
def test_a_string_input_is_a_user_message_answered_as_chat_answers_it(client: openai.OpenAI, hf_tokenizer: Any) -> None:
    response = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, temperature=0)
    _check_response(response)
    assert "Paris" in response.output_text
    assert response.usage.input_tokens == _prompt_tokens(hf_tokenizer, [{"role": "user", "content": QUESTION}])
    assert response.store is True and response.model == MODEL and response.max_output_tokens == 16
    assert response.text.format.type == "text" and response.tools == [] and response.previous_response_id is None
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=16, temperature=0
    )
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.output_tokens == chat.usage.completion_tokens


def test_items_and_instructions_are_rendered_in_order(client: openai.OpenAI, hf_tokenizer: Any) -> None:
    response = client.responses.create(
        model=MODEL,
        instructions="Answer in one word.",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Paris.", "annotations": []}]},
            {"role": "user", "content": "And of Germany?"},
        ],
        max_output_tokens=16,
        temperature=0,
        metadata={"case": "items"},
    )
    _check_response(response)
    rendered = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany?"},
    ]
    assert response.usage.input_tokens == _prompt_tokens(hf_tokenizer, rendered)
    assert response.instructions == "Answer in one word." and response.metadata == {"case": "items"}


class Verdict(BaseModel):
    answer: str
    confident: bool


def test_text_format_json_schema_constrains_the_output(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Berlin"]}, "sure": {"type": "boolean"}},
        "required": ["city", "sure"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=MODEL,
        input=QUESTION,
        text={"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}},
        max_output_tokens=40,
        temperature=0,
    )
    assert response.status == "completed"
    Draft202012Validator(schema).validate(json.loads(response.output_text))
    assert response.text.format.type == "json_schema" and response.text.format.name == "capital"
    parsed = client.responses.parse(
        model=MODEL, input="Is Paris in France? Say so in JSON.", text_format=Verdict, max_output_tokens=64
    )
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Verdict)
    as_object = client.responses.create(
        model=MODEL,
        input="Give the capital of France as JSON.",
        text={"format": {"type": "json_object"}},
        max_output_tokens=48,
        temperature=0,
    )
    if as_object.status == "completed":
        assert isinstance(json.loads(as_object.output_text), dict)
    else:  # cut by max_output_tokens: still the start of an object
        assert as_object.output_text.lstrip().startswith("{")


def test_a_streamed_response_sends_openais_events_in_order(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input=QUESTION, max_output_tokens=16, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert kinds == [*STREAM_ORDER_HEAD, *["response.output_text.delta"] * len(deltas), *STREAM_ORDER_TAIL, kinds[-1]]
    assert kinds[-1] == "response.completed" and deltas
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(event.delta for event in deltas) == final.output_text
    _check_response(final)
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == final.output_text and stored.usage == final.usage
    whole = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, temperature=0)
    assert whole.output_text == final.output_text and whole.usage.input_tokens == final.usage.input_tokens


def test_create_with_stream_true_ends_incomplete_when_cut(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model=MODEL, input="Tell me a long story.", max_output_tokens=16, stream=True)
    )
    assert [e.type for e in events[:4]] == STREAM_ORDER_HEAD
    assert [e.type for e in events[-4:]] == [*STREAM_ORDER_TAIL, "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1].response
    assert last.status == "incomplete" and last.incomplete_details.reason == "max_output_tokens"
    assert last.usage.output_tokens == 16 and last.output[0].status == "incomplete"


def test_stored_responses_are_retrieved_listed_and_deleted(client: openai.OpenAI) -> None:
    texts = ["one", "two", "three"]
    response = client.responses.create(
        model=MODEL, input=[{"role": "user", "content": text} for text in texts], max_output_tokens=16
    )
    assert client.responses.retrieve(response.id).model_dump() == response.model_dump()
    newest_first = client.responses.input_items.list(response.id)
    assert [item.content[0].text for item in newest_first.data] == texts[::-1]
    page = client.responses.input_items.list(response.id, order="asc", limit=2)
    assert [item.content[0].text for item in page.data] == texts[:2] and page.has_more
    rest = client.responses.input_items.list(response.id, order="asc", after=page.data[-1].id)
    assert [item.content[0].text for item in rest.data] == texts[2:] and not rest.has_more
    assert all(item.id.startswith("msg_") and item.role == "user" for item in newest_first.data)
    deleted = client.responses.delete(response.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    for call in (
        lambda: client.responses.retrieve(response.id),
        lambda: client.responses.input_items.list(response.id),
        lambda: client.responses.delete(response.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()


def test_previous_response_id_continues_the_stored_conversation(client: openai.OpenAI, hf_tokenizer: Any) -> None:
    first = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, temperature=0)
    second = client.responses.create(
        model=MODEL,
        input="And of Italy?",
        previous_response_id=first.id,
        instructions="Answer briefly.",  # the first one's instructions (none) are not carried over
        max_output_tokens=16,
        temperature=0,
    )
    third = client.responses.create(
        model=MODEL, input="And of Spain?", previous_response_id=second.id, max_output_tokens=16, temperature=0
    )
    conversation = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And of Italy?"},
    ]
    system = [{"role": "system", "content": "Answer briefly."}]
    assert second.usage.input_tokens == _prompt_tokens(hf_tokenizer, system + conversation)
    conversation += [{"role": "assistant", "content": second.output_text}, {"role": "user", "content": "And of Spain?"}]
    assert third.usage.input_tokens == _prompt_tokens(hf_tokenizer, conversation)
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens
    assert third.previous_response_id == second.id
    assert [i.content[0].text for i in client.responses.input_items.list(third.id).data] == ["And of Spain?"]
    client.responses.delete(second.id)  # the chain now ends at the deleted response: the first turn is gone too
    fourth = client.responses.create(
        model=MODEL, input="Thanks.", previous_response_id=third.id, max_output_tokens=16, temperature=0
    )
    remaining = [
        {"role": "user", "content": "And of Spain?"},
        {"role": "assistant", "content": third.output_text},
        {"role": "user", "content": "Thanks."},
    ]
    assert fourth.usage.input_tokens == _prompt_tokens(hf_tokenizer, remaining)


def test_a_named_function_is_called_with_arguments_that_validate(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
        temperature=0,
    )
    assert response.status == "completed"
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    Draft202012Validator(CITY).validate(json.loads(call.arguments))
    assert response.tools[0].name == "get_weather" and response.tool_choice.name == "get_weather"


def test_a_streamed_call_sends_its_arguments_as_deltas(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL,
        input="What is the weather in Rome?",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=48,
        temperature=0,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    pieces = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    [call] = final.output  # parallel calls off: one call
    assert call.type == "function_call" and "".join(pieces) == call.arguments
    Draft202012Validator(CITY).validate(json.loads(call.arguments))


def test_a_call_result_continues_the_chain_as_the_items_would(client: openai.OpenAI) -> None:
    asked = "What is the weather in Berlin?"
    first = client.responses.create(
        model=MODEL,
        input=asked,
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls
    results = [{"type": "function_call_output", "call_id": call.call_id, "output": "12 C, rain"} for call in calls]
    chained = client.responses.create(
        model=MODEL, input=results, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=16, temperature=0
    )
    sent = [{"role": "user", "content": asked}, *calls, *results]  # the SDK sends back what it was sent
    whole = client.responses.create(model=MODEL, input=sent, tools=[WEATHER], max_output_tokens=16, temperature=0)
    assert chained.usage.input_tokens == whole.usage.input_tokens > first.usage.input_tokens
    assert chained.output_text == whole.output_text
    listed = client.responses.input_items.list(chained.id, order="asc").data
    assert [(item.type, item.call_id) for item in listed] == [("function_call_output", c.call_id) for c in calls]


def test_store_false_is_neither_kept_nor_continued(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="more", previous_response_id=response.id, max_output_tokens=16)
    assert refused.value.code == "previous_response_not_found"


def test_another_tenants_response_is_not_found(client: openai.OpenAI, admin: httpx.Client, server: str) -> None:
    mine = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16)
    other = openai_client(server, create_tenant(admin, "other")[1])
    for call in (
        lambda: other.responses.retrieve(mine.id),
        lambda: other.responses.delete(mine.id),
        lambda: other.responses.input_items.list(mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as refused:
        other.responses.create(model=MODEL, input="hi", previous_response_id=mine.id, max_output_tokens=16)
    assert refused.value.param == "previous_response_id"
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its owner


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "web_search"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type", "file_search"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type", "code_interpreter"),
    ({"tools": [WEATHER, {"type": "mcp", "server_label": "x", "server_url": "https://x"}]}, "tools[1].type", "mcp"),
    ({"tools": [{"type": "image_generation"}]}, "tools[0].type", "image_generation"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
    ({"tools": [{**WEATHER, "name": "bad name"}]}, "tools[0].name", "pattern"),
    (
        {"tools": [{**WEATHER, "parameters": {"type": "object", "properties": {"x": {"$ref": "http://x"}}}}]},
        "tools[0].parameters",
        "references",
    ),
    ({"tool_choice": "required"}, "tool_choice", "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice", "other"),
    (
        {"input": [{"type": "function_call_output", "call_id": "call_1", "output": "x"}]},
        "input[0].tool_call_id",
        "preceding",
    ),
    (
        {"input": [{"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}]},
        "input[0]",
        "call_1",
    ),
    ({"background": True}, "background", "background"),
    ({"conversation": "conv_1"}, "conversation", "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt", "prompt"),
    ({"reasoning": {"effort": "high"}}, "reasoning.effort", "effort"),
    ({"include": ["message.output_text.logprobs"]}, "include", "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs", "top_logprobs"),
    ({"max_output_tokens": 8}, "max_output_tokens", "16"),
    ({"stream_options": {"include_obfuscation": False}}, "stream_options", "stream"),
    ({"temperature": 3}, "temperature", "2"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
        "input[0].content[0].type",
        "text only",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
        "input[0].content[0].type",
        "text only",
    ),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "item_reference"),
    ({"input": []}, "input", "at least 1"),
    ({"text": {"format": {"type": "json_schema", "name": "bad name!", "schema": {}}}}, "text.format.name", ""),
    (
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"$ref": "https://evil/x"}}}},
        "text.format.schema",
        "references",
    ),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "16"),
    ({"metadata": {"k": "v" * 513}}, "metadata", "512"),
    ({"previous_response_id": "resp_" + "0" * 32}, "previous_response_id", "not found"),
    ({"previous_response_id": "x" * 65}, "previous_response_id", "64"),
    ({"previous_response_id": 7}, "previous_response_id", "string"),
    ({"previous_response_id": "resp_1 OR 1=1"}, "previous_response_id", "pattern"),
    ({"store": "yes"}, "store", "boolean"),
    ({"modalities": ["text"]}, "modalities", "Unrecognized"),
]


@pytest.mark.parametrize(("extra", "param", "said"), REFUSED, ids=[case[1] + "-" + case[2] for case in REFUSED])
def test_what_cannot_be_honoured_is_a_400_naming_it(
    http: httpx.Client, extra: dict[str, Any], param: str, said: str
) -> None:
    reply = http.post("/v1/responses", json={"model": MODEL, "input": "hi", **extra})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and said in error["message"], error


def test_bogus_ids_are_refused_or_not_found(http: httpx.Client) -> None:
    assert http.get("/v1/responses/resp_unknown").status_code == 404
    assert http.get("/v1/responses/" + "r" * 65).status_code == 400
    assert http.delete("/v1/responses/%00%01").status_code == 400
    assert http.get("/v1/responses/resp_x/input_items", params={"after": "'; drop"}).status_code == 400
    assert http.get("/v1/responses/resp_unknown/input_items", params={"limit": 0}).status_code == 400


def test_usage_equals_the_ledger_streamed_or_not(admin: httpx.Client, server: str, server_data_dir: Path) -> None:
    tenant, key = create_tenant(admin, "responses-ledger")
    client = openai_client(server, key)
    told = [client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16).usage]
    events = list(client.responses.create(model=MODEL, input="Tell me a story.", max_output_tokens=20, stream=True))
    streamed = events[-1].response  # incomplete or completed, its usage is what the client is told
    told.append(streamed.usage)
    chained = client.responses.create(
        model=MODEL, input="More.", previous_response_id=streamed.id, max_output_tokens=16
    )
    told.append(chained.usage)
    expected = sorted((u.input_tokens, u.output_tokens) for u in told if u is not None)
    database = f"sqlite:///{server_data_dir / 'llmaas.db'}"
    deadline = time.monotonic() + 10
    while len(rows := ledger_rows(database, tenant["id"])) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted((prompt, completion) for _, prompt, completion, _ in rows) == expected


# -- the gateway's logic on the instant fake engine -------------------------------------------------------------------
Start = Callable[..., InProcessGateway]


def test_a_chain_is_bounded_in_depth(in_process: Start) -> None:
    _, _, client = in_process(responses_max_chain_depth=2).tenant()
    first = client.responses.create(model="fake", input="a", max_output_tokens=16)
    second = client.responses.create(model="fake", input="b", previous_response_id=first.id, max_output_tokens=16)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="fake", input="c", previous_response_id=second.id, max_output_tokens=16)
    assert refused.value.code == "response_chain_too_long"


def test_a_chain_past_the_context_window_is_refused_or_truncated(in_process: Start) -> None:
    _, _, client = in_process(engine=FakeEngine(max_model_len=300)).tenant()
    first = client.responses.create(model="fake", input="x" * 60, max_output_tokens=40)
    previous = client.responses.create(
        model="fake", input="y" * 60, previous_response_id=first.id, max_output_tokens=40
    )
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="fake", input="z" * 60, previous_response_id=previous.id, max_output_tokens=40)
    assert refused.value.code == "context_length_exceeded"
    cut = client.responses.create(
        model="fake", input="z" * 60, previous_response_id=previous.id, max_output_tokens=40, truncation="auto"
    )
    assert cut.truncation == "auto" and 0 < cut.usage.input_tokens <= 300 - 40
    assert cut.usage.input_tokens > 60 + 40  # some of the chain is kept, not just the new input


def test_retention_erasure_and_export_cover_stored_responses(in_process: Start, tmp_path: Path) -> None:
    gateway = in_process()
    tenant_id, name, client = gateway.tenant()
    _, _, other = gateway.tenant("other")
    old = client.responses.create(model="fake", input="old secret", max_output_tokens=16)
    kept = client.responses.create(model="fake", input="new secret", max_output_tokens=16)
    others = other.responses.create(model="fake", input="not theirs", max_output_tokens=16)
    database = Database(f"sqlite:///{tmp_path / 'llmaas.db'}")
    try:
        with database.session() as session:
            session.get(StoredResponse, old.id).created_at = utcnow() - timedelta(days=31)  # type: ignore[union-attr]
        retention = Retention(database, gateway.state.files, files_days=None, eval_items_days=None, responses_days=30)
        assert retention.purge_once()["responses"] == 1
        assert retention.purge_once()["responses"] == 0
    finally:
        database.dispose()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(old.id)
    out = io.BytesIO()
    gateway.state.exports.write(tenant_id, out)
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:gz") as archive:
        exported = archive.extractfile("responses/responses.jsonl").read().splitlines()  # type: ignore[union-attr]
        items = archive.extractfile("responses/input_items.jsonl").read().splitlines()  # type: ignore[union-attr]
    assert [json.loads(line)["id"] for line in exported] == [kept.id]
    assert [json.loads(line)["item"]["content"][0]["text"] for line in items] == ["new secret"]
    erased = gateway.state.eraser.erase(name, Actor("operator"))
    assert erased.counts["responses"] == 1
    assert other.responses.retrieve(others.id).id == others.id


def test_a_stream_the_engine_breaks_ends_failed_and_bills_what_was_sent(in_process: Start, tmp_path: Path) -> None:
    tenant_id, _, client = in_process(engine=BreakingEngine("abc")).tenant()
    events = list(client.responses.create(model="fake", input="hi", max_output_tokens=16, stream=True))
    assert [e.type for e in events[:4]] == STREAM_ORDER_HEAD
    assert [e.type for e in events[4:]] == ["response.output_text.delta"] * 3 + ["response.failed"]
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "engine_error"
    assert failed.output[0].content[0].text == "abc"
    deadline = time.monotonic() + 10
    while not (rows := ledger_rows(f"sqlite:///{tmp_path / 'llmaas.db'}", tenant_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(prompt, completion) for _, prompt, completion, _ in rows] == [
        (failed.usage.input_tokens, failed.usage.output_tokens)
    ]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(failed.id)
