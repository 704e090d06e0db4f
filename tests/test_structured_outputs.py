"""Structured outputs: ``response_format`` (json_object, json_schema with the SDK's ``.parse()``) and vLLM's
``structured_outputs`` / ``guided_*`` extras on chat and completions, through the real server and model, every
sampled output validated against its schema; hostile constraints refused with a 400 naming what is wrong (the
compile budget through the app in process, on a schema that really takes long to compile); and the checker's
cache, sharing and bounds on their own."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from engine.protocol import StructuredOutput
from gateway.errors import InvalidRequestError, ServiceUnavailable
from gateway.inference.grammar_pool import GrammarPool
from gateway.inference.structured import StructuredLimits, StructuredOutputs
from tests.finetune_data import pirate_jsonl
from tests.support import MODEL
from tests.support.in_process import InProcessGateway
from tests.support.tenants import create_tenant, openai_client
from tests.test_fine_tuning_e2e import FAST, upload, wait_for


class Pet(BaseModel):
    """Outputs that always finish: an enum, a small bounded integer, a short string."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["cat", "dog", "fish"]
    legs: int = Field(ge=0, le=8)
    name: str = Field(max_length=12)


PET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog", "fish"]},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8},
        "name": {"type": "string", "maxLength": 12},
    },
    "required": ["kind", "legs", "name"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a pet as JSON with its kind, number of legs and name."}]


def pet_format(schema: dict[str, Any] = PET_SCHEMA) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "pet", "schema": schema, "strict": True}}


def refusal(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The error of a request that must be refused with a 400."""
    reply = http.post(path, json={"model": MODEL, "max_tokens": 8, **body})
    assert reply.status_code == 400, reply.text
    error: dict[str, Any] = reply.json()["error"]
    return error


# -- through the real server ------------------------------------------------------------------------------------


def test_parse_with_a_pydantic_model_gives_a_valid_object_and_exact_usage(
    client: openai.OpenAI, hf_tokenizer: Any
) -> None:
    reply = client.chat.completions.parse(
        model=MODEL,
        messages=ASK,
        response_format=Pet,
        max_tokens=60,
        temperature=0,
        logprobs=True,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, Pet)
    rendered = hf_tokenizer.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True)
    assert reply.usage is not None and choice.logprobs is not None and choice.logprobs.content is not None
    assert reply.usage.prompt_tokens == len(hf_tokenizer.encode(rendered, add_special_tokens=False))
    assert reply.usage.completion_tokens == len(choice.logprobs.content)


def test_json_object_mode_answers_a_json_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, response_format={"type": "json_object"}, max_tokens=40, temperature=0
    )
    content = reply.choices[0].message.content or ""
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut by max_tokens: still the start of an object
        assert content.lstrip().startswith("{")


@pytest.mark.parametrize("stream", [False, True])
def test_every_sampled_choice_validates_streamed_or_not(client: openai.OpenAI, stream: bool) -> None:
    texts = ["", "", ""]
    finishes: list[str | None] = [None] * 3
    common: dict[str, Any] = {"model": MODEL, "messages": ASK, "response_format": pet_format(), "max_tokens": 80}
    if stream:
        usage = None
        for chunk in client.chat.completions.create(
            **common, n=3, temperature=0.8, seed=7, stream=True, stream_options={"include_usage": True}
        ):
            usage = chunk.usage or usage
            for part in chunk.choices:
                texts[part.index] += part.delta.content or ""
                finishes[part.index] = part.finish_reason or finishes[part.index]
        assert usage is not None and usage.completion_tokens > 0
    else:
        reply = client.chat.completions.create(**common, n=3, temperature=0.8, seed=7)
        texts = [choice.message.content or "" for choice in reply.choices]
        finishes = [choice.finish_reason for choice in reply.choices]
    assert finishes == ["stop"] * 3, texts
    for text in texts:
        jsonschema.validate(json.loads(text), PET_SCHEMA)


def test_completions_take_response_format_and_structured_outputs(client: openai.OpenAI) -> None:
    prompt = "A pet, as JSON:"
    schema_reply = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=80, temperature=0, extra_body={"response_format": pet_format()}
    )
    assert schema_reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(schema_reply.choices[0].text), PET_SCHEMA)

    choice_reply = client.completions.create(
        model=MODEL,
        prompt=["Is the sky blue?", "Is fire cold?"],
        n=2,
        max_tokens=5,
        temperature=1.0,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert [choice.text in ("yes", "no") for choice in choice_reply.choices] == [True] * 4

    regex_reply = client.completions.create(
        model=MODEL, prompt="A year:", max_tokens=10, temperature=0, extra_body={"guided_regex": r"(19|20)\d\d"}
    )
    assert regex_reply.choices[0].finish_reason == "stop"
    assert len(regex_reply.choices[0].text) == 4 and regex_reply.choices[0].text[:2] in ("19", "20")


def test_a_fine_tuned_model_is_constrained_too(server: str, admin: httpx.Client) -> None:
    _, key = create_tenant(admin, "structured-tuner")
    tuner = openai_client(server, key)
    job = tuner.fine_tuning.jobs.create(model=MODEL, training_file=upload(tuner, pirate_jsonl()), hyperparameters=FAST)
    job = wait_for(tuner, job.id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded" and job.fine_tuned_model, job.error
    reply = tuner.chat.completions.create(
        model=job.fine_tuned_model,
        messages=ASK,
        response_format=pet_format(),
        max_tokens=80,
        n=2,
        temperature=0.8,  # type: ignore[arg-type]
    )
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content or ""), PET_SCHEMA)


def test_one_constraint_per_request(http: httpx.Client) -> None:
    error = refusal(
        http,
        "/v1/chat/completions",
        {"messages": ASK, "response_format": {"type": "json_object"}, "guided_choice": ["a", "b"]},
    )
    assert "response_format, guided_choice" in error["message"] and error["param"] == "guided_choice"
    error = refusal(http, "/v1/completions", {"prompt": "x", "structured_outputs": {"regex": "a", "choice": ["a"]}})
    assert error["param"] == "structured_outputs"
    error = refusal(
        http, "/v1/completions", {"prompt": "x", "structured_outputs": {"regex": "a", "whitespace_pattern": " "}}
    )
    assert "whitespace_pattern" in json.dumps(error)  # vLLM's other knobs are refused, never ignored


@pytest.mark.parametrize(
    ("schema", "code", "words"),
    [
        (
            {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}},
            "invalid_json_schema",
            "https://example.com",
        ),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "invalid_json_schema", "'uniqueItems'"),
        ({"type": "string", "format": "credit-card"}, "invalid_json_schema", "'credit-card'"),
        ({"type": "integer", "minimum": "zero"}, "invalid_json_schema", "not a valid JSON schema"),
        (
            {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1100)}},
            "structured_output_too_large",
            "1100 properties",
        ),
        ({"type": "string", "description": "x" * 70_000}, "structured_output_too_large", "bytes"),
    ],
)
def test_hostile_schemas_are_refused_naming_the_problem(
    http: httpx.Client, schema: dict[str, Any], code: str, words: str
) -> None:
    error = refusal(http, "/v1/chat/completions", {"messages": ASK, "response_format": pet_format(schema)})
    assert error["code"] == code and error["param"] == "response_format" and words in error["message"], error


def test_too_deep_schemas_and_bad_names_are_refused(http: httpx.Client) -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    error = refusal(http, "/v1/chat/completions", {"messages": ASK, "response_format": pet_format(deep)})
    assert "deeper than" in error["message"]
    bad_name = {"type": "json_schema", "json_schema": {"name": "a pet!", "schema": PET_SCHEMA}}
    error = refusal(http, "/v1/chat/completions", {"messages": ASK, "response_format": bad_name})
    assert "name" in json.dumps(error)
    error = refusal(http, "/v1/completions", {"prompt": "x", "guided_grammar": "root ::= ("})
    assert error["code"] == "invalid_structured_output" and error["param"] == "guided_grammar"


# -- the compile budget, through the app in process -------------------------------------------------------------


def slow_schema(strings: int) -> dict[str, Any]:
    """Each string property of its own length bound is a grammar rule of its own, every one of which xgrammar
    checks against the whole vocabulary (about two seconds each on a busy CPU; a dozen takes tens of seconds)."""
    properties = {f"p{i}": {"type": "string", "maxLength": 3000 + i} for i in range(strings)}
    return {"type": "object", "properties": properties}


def test_a_schema_that_compiles_too_long_is_refused_and_the_verdict_cached(
    in_process: Callable[..., InProcessGateway], model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMAAS_MODEL_PATH", str(model_dir))  # the tokenizer compiled against
    gateway = in_process(structured_compile_seconds=1)
    _, _, tenant = gateway.tenant()
    body: dict[str, Any] = {
        "model": "fake",
        "messages": ASK,
        "max_tokens": 4,
        "response_format": pet_format(slow_schema(12)),
    }
    for attempt in range(2):
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError) as refused:
            tenant.chat.completions.create(**body)
        elapsed = time.monotonic() - started
        assert refused.value.code == "structured_output_too_complex", refused.value
        assert elapsed < (60 if attempt == 0 else 1)  # the worker is killed at the budget + grace; then cached
    ok = tenant.chat.completions.create(**{**body, "response_format": pet_format()})
    assert ok.choices[0].finish_reason is not None  # the pool came back for the next schema


# -- the checker on its own ---------------------------------------------------------------------------------------


@pytest.fixture
def checker() -> Iterator[StructuredOutputs]:
    """A checker on one compile process (single-byte vocabulary), at most two compiles waiting."""
    pool = GrammarPool(1, None, budget=10, waiting=2)
    yield StructuredOutputs(pool, StructuredLimits(max_enum_items=3))
    pool.close()


async def test_concurrent_checks_of_one_constraint_share_one_compile_and_the_verdict_is_cached(
    checker: StructuredOutputs,
) -> None:
    started = time.monotonic()
    results = await asyncio.gather(*(checker.json_schema(PET_SCHEMA, "response_format") for _ in range(8)))
    assert len(set(results)) == 1 and results[0].kind == "json"  # 8 > 2 waiting: they shared one compile
    again = time.monotonic()
    await checker.requested(("guided_json", "json", dict(reversed(list(PET_SCHEMA.items())))))  # same, canonical
    assert time.monotonic() - again < 0.05 < again - started
    with pytest.raises(InvalidRequestError) as bad:
        await checker.requested(("guided_regex", "regex", "(unclosed"))
    assert bad.value.param == "guided_regex" and bad.value.code == "invalid_structured_output"
    choice = await checker.requested(("guided_choice", "choice", ['say "hi"', "no"]))
    assert choice == StructuredOutput("choice", '["say \\"hi\\"", "no"]')


async def test_too_many_waiting_compiles_are_answered_503(checker: StructuredOutputs) -> None:
    schemas = [{"type": "string", "maxLength": 5 + i} for i in range(6)]
    results = await asyncio.gather(
        *(checker.json_schema(schema, "response_format") for schema in schemas), return_exceptions=True
    )
    assert [type(result) for result in results] == [StructuredOutput] * 3 + [ServiceUnavailable] * 3, results


async def test_cheap_refusals_need_no_compile(checker: StructuredOutputs) -> None:
    with pytest.raises(InvalidRequestError, match="4 items"):
        await checker.requested(("structured_outputs", "choice", ["a", "b", "c", "d"]))
    with pytest.raises(InvalidRequestError, match="4 enum items"):
        await checker.json_schema({"enum": [1, 2, 3, 4]}, "response_format")
    with pytest.raises(InvalidRequestError, match="'allOf' with several schemas"):
        await checker.json_schema({"allOf": [{"type": "string"}, {"enum": ["a"]}]}, "response_format")
    with pytest.raises(InvalidRequestError, match="'minLength'/'maxLength' together with 'pattern'"):
        await checker.json_schema({"type": "string", "pattern": "a+", "maxLength": 3}, "response_format")
    with pytest.raises(InvalidRequestError, match="must be an object"):
        await checker.json_schema(["not", "a", "schema"], "guided_json")
    with pytest.raises(InvalidRequestError, match="NUL"):
        await checker.requested(("guided_regex", "regex", "a\x00"))
    assert not checker._in_flight and all(not slot.warm for slot in checker._compiler._slots)  # nothing compiled
