"""Speculative decoding (``LLMAAS_SPECULATION=ngram``) changes nothing a client or the ledger sees: one gateway
with it on, compared with the session's ``server`` (off), over HTTP with the official client. Greedy answers are
identical (chat and completions, streamed and not, an extraction prompt whose answer copies from the prompt, so
drafts are accepted), logprobs equal (to fp32 rounding: see ``LOGPROB_TOLERANCE``), usage equal to the baseline's
and to the number of tokens emitted, max_tokens and stop strings honoured where they cut an accepted draft, the
tenant's ledger the sum of what the client saw, and the drafts and acceptances counted in ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import ValidationError

from engine.settings import EngineSettings
from engine.speculation import speculative_config
from tests.support.gateway_process import second_model_gateway
from tests.support.metrics import metric_value
from tests.support.tenants import admin_client, admin_usage, create_tenant, openai_client

MODEL = "smollm2-135m-instruct"
LOGPROB_TOLERANCE = 1e-4
"""Verifying k drafts runs the model on k + 1 positions in one step, so its matrix products may have other shapes
(another summation order) than one-token decoding: logprobs agree to fp32 rounding (at most ~1e-6 apart where
measured), not always to the bit."""
DOCUMENT = (
    "Customer Alice Martin: lives at 14 Rue des Lilas, 69003 Lyon; phone +33 4 72 11 20 45; order #4107.\n"
    "Customer Bruno Keller: lives at 7 Lindenstrasse, 8001 Zurich; phone +41 44 310 22 90; order #4114.\n"
    "Customer Carla Rossi: lives at 22 Via Garibaldi, 10122 Turin; phone +39 011 562 7781; order #4121."
)
CHATS = {
    "extraction": f"Text:\n{DOCUMENT}\n\nCopy the line about Bruno Keller from the text exactly.",
    "json": f"Text:\n{DOCUMENT}\n\nExtract the record of Carla Rossi as JSON with the keys name, street and city.",
    "open": "What is the capital of France?",
}
COMPLETION = f"{DOCUMENT}\n{DOCUMENT.splitlines()[0]}\n"
"""A completion prompt that repeats itself: the model goes on copying the line it has begun (Alice's address)."""


@pytest.fixture(scope="module")
def spec_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second gateway, as the session ``server`` but with ngram speculation (the tests run one or two sequences at
    once: drafts in every step)."""
    data_dir = tmp_path_factory.mktemp("speculation")
    with second_model_gateway(data_dir, model_dir, speculation="ngram", speculative_tokens=4) as gateway:
        yield gateway.base


@pytest.fixture(scope="module")
def spec_client(spec_server: str) -> openai.OpenAI:
    with admin_client(spec_server) as admin:
        return openai_client(spec_server, create_tenant(admin, "speculation")[1])


def chat(client: openai.OpenAI, prompt: str, *, stream: bool, **options: Any) -> dict[str, Any]:
    """A greedy chat answer: its text, tokens with logprobs, finish reason and usage (streamed: put together)."""
    messages = [{"role": "user", "content": prompt}]
    common: dict[str, Any] = {"model": MODEL, "messages": messages, "temperature": 0, "logprobs": True}
    if not stream:
        answer = client.chat.completions.create(**common, **options)
        choice = answer.choices[0]
        assert choice.logprobs is not None and choice.logprobs.content is not None and answer.usage is not None
        tokens = [(t.token, t.logprob) for t in choice.logprobs.content]
        return result(choice.message.content or "", tokens, choice.finish_reason, answer.usage)
    text, tokens, finish, usage = "", [], None, None
    for chunk in client.chat.completions.create(
        **common, **options, stream=True, stream_options={"include_usage": True}
    ):
        usage = chunk.usage or usage
        for streamed in chunk.choices:
            text += streamed.delta.content or ""
            tokens += [(t.token, t.logprob) for t in (streamed.logprobs.content or [])] if streamed.logprobs else []
            finish = streamed.finish_reason or finish
    return result(text, tokens, finish, usage)


def complete(client: openai.OpenAI, prompt: str, *, stream: bool, **options: Any) -> dict[str, Any]:
    """A greedy completion, as ``chat``."""
    common: dict[str, Any] = {"model": MODEL, "prompt": prompt, "temperature": 0, "logprobs": 1}
    if not stream:
        answer = client.completions.create(**common, **options)
        choice = answer.choices[0]
        assert choice.logprobs is not None and answer.usage is not None
        tokens = list(zip(choice.logprobs.tokens or [], choice.logprobs.token_logprobs or [], strict=True))
        return result(choice.text, tokens, choice.finish_reason, answer.usage)
    text, tokens, finish, usage = "", [], None, None
    for chunk in client.completions.create(**common, **options, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for streamed in chunk.choices:
            text += streamed.text
            if streamed.logprobs is not None:
                tokens += list(zip(streamed.logprobs.tokens or [], streamed.logprobs.token_logprobs or [], strict=True))
            finish = streamed.finish_reason or finish
    return result(text, tokens, finish, usage)


def result(text: str, tokens: list[Any], finish: str | None, usage: Any) -> dict[str, Any]:
    assert usage is not None
    return {
        "text": text,
        "tokens": [token for token, _ in tokens],
        "logprobs": [logprob for _, logprob in tokens],
        "finish": finish,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
    }


def assert_same(spec: dict[str, Any], base: dict[str, Any]) -> None:
    """The answers alike (text, tokens, finish, usage), logprobs to fp32 rounding; each token billed once."""
    assert spec["text"] == base["text"]
    assert spec["tokens"] == base["tokens"]
    assert spec["finish"] == base["finish"]
    assert (spec["prompt_tokens"], spec["completion_tokens"]) == (base["prompt_tokens"], base["completion_tokens"])
    assert spec["logprobs"] == pytest.approx(base["logprobs"], abs=LOGPROB_TOLERANCE)
    # Billed: the tokens emitted, one logprob entry each (not the drafts). Where the length cut the answer, the
    # text is those tokens and nothing else. (Encoding the text again is no count of them: the tokenizer may merge
    # what the model emitted as two tokens.)
    assert spec["completion_tokens"] == len(spec["tokens"])
    if spec["finish"] == "length":
        assert "".join(spec["tokens"]) == spec["text"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("name", sorted(CHATS))
def test_greedy_chat_is_identical(name: str, stream: bool, spec_client: openai.OpenAI, client: openai.OpenAI) -> None:
    spec = chat(spec_client, CHATS[name], stream=stream, max_tokens=48)
    assert_same(spec, chat(client, CHATS[name], stream=stream, max_tokens=48))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_greedy_completion_is_identical(stream: bool, spec_client: openai.OpenAI, client: openai.OpenAI) -> None:
    spec = complete(spec_client, COMPLETION, stream=stream, max_tokens=40)
    assert_same(spec, complete(client, COMPLETION, stream=stream, max_tokens=40))
    assert "14 Rue des Lilas, 69003 Lyon" in spec["text"]  # it copies a line: the drafts are accepted


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("cut", [{"max_tokens": 7}, {"max_tokens": 40, "stop": ["Lyon"]}], ids=["length", "stop"])
def test_cuts_inside_an_accepted_draft(
    cut: dict[str, Any], stream: bool, spec_client: openai.OpenAI, client: openai.OpenAI
) -> None:
    """Both cut the copied line in its middle, where a step brings several accepted tokens at once: the answer
    ends exactly where it would without speculation, and what follows the cut is neither sent nor billed."""
    spec = complete(spec_client, COMPLETION, stream=stream, **cut)
    assert_same(spec, complete(client, COMPLETION, stream=stream, **cut))
    if "stop" in cut:
        assert spec["finish"] == "stop" and spec["text"].endswith("14 Rue des Lilas, 69003 ")
    else:
        assert spec["finish"] == "length" and spec["completion_tokens"] == 7


def test_structured_output_and_penalties_alike(spec_client: openai.OpenAI, client: openai.OpenAI) -> None:
    """A JSON schema (xgrammar rolls the grammar back over rejected drafts) and repetition penalties (applied to
    every position a step verifies): the same answer as without speculation."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "city": {"type": "string"}},
        "required": ["name", "city"],
        "additionalProperties": False,
    }
    structured: dict[str, Any] = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "customer", "schema": schema}},
        "max_tokens": 40,
    }
    penalised: dict[str, Any] = {"frequency_penalty": 0.5, "presence_penalty": 0.3, "max_tokens": 40}
    for options in (structured, penalised):
        assert_same(
            chat(spec_client, CHATS["json"], stream=False, **options),
            chat(client, CHATS["json"], stream=False, **options),
        )


def test_greedy_choices_alike(spec_client: openai.OpenAI, client: openai.OpenAI) -> None:
    """n > 1 at temperature 0: every choice is the baseline's answer."""
    options: dict[str, Any] = {"model": MODEL, "prompt": COMPLETION, "temperature": 0, "max_tokens": 24, "n": 2}
    spec = spec_client.completions.create(**options)
    base = client.completions.create(**options)
    assert [c.text for c in spec.choices] == [c.text for c in base.choices] == [base.choices[0].text] * 2
    assert spec.usage == base.usage


def test_ledger_is_what_the_client_saw(spec_server: str) -> None:
    """A fresh tenant's requests (streamed and not, cut by length and by stop string): the ledger adds up the
    usage each answer reported, and /metrics counts drafts, most of them accepted on copying prompts."""
    with admin_client(spec_server) as admin:
        tenant, key = create_tenant(admin, "speculation-ledger")
        tenant_client = openai_client(spec_server, key)
        before = admin.get("/metrics").text
        seen = [
            complete(tenant_client, COMPLETION, stream=False, max_tokens=30),
            complete(tenant_client, COMPLETION, stream=True, max_tokens=40, stop=["Lyon"]),
            chat(tenant_client, CHATS["extraction"], stream=True, max_tokens=9),
            chat(tenant_client, CHATS["json"], stream=False, max_tokens=40),
        ]
        totals = admin_usage(admin, tenant["id"], len(seen))
        after = admin.get("/metrics").text
    assert totals["requests"] == len(seen)
    assert totals["prompt_tokens"] == sum(answer["prompt_tokens"] for answer in seen)
    assert totals["completion_tokens"] == sum(answer["completion_tokens"] for answer in seen)
    drafted = metric_value(after, "llmaas_speculation_draft_tokens_total") - metric_value(
        before, "llmaas_speculation_draft_tokens_total"
    )
    accepted = metric_value(after, "llmaas_speculation_accepted_tokens_total") - metric_value(
        before, "llmaas_speculation_accepted_tokens_total"
    )
    assert drafted > 0 and 0 < accepted <= drafted
    # Each accepted draft token was emitted by a step that emitted one more of its own: at most all but one per
    # step were drafts, so the tokens emitted exceed the accepted drafts.
    assert accepted < totals["completion_tokens"]


def test_prompt_lookup_bounds_are_checked_only_when_speculation_is_on() -> None:
    assert EngineSettings(speculation="off", prompt_lookup_min=6, prompt_lookup_max=5).speculation == "off"
    with pytest.raises(ValidationError, match="prompt_lookup_min"):
        EngineSettings(prompt_lookup_min=6, prompt_lookup_max=5)  # speculation is on by default


def test_drafts_stop_above_two_streams_by_default() -> None:
    """From 4 streams the rejected drafts cost more than the accepted ones save (docs/benchmarks.md): vLLM's batch
    schedule drafts 4 tokens for batches of 1 to 2 sequences and none from 3 on."""
    config = speculative_config(EngineSettings())
    assert config is not None
    assert config["num_speculative_tokens_per_batch_size"] == [[1, 2, 4], [3, 3, 0]]
    assert speculative_config(EngineSettings(speculation="off")) is None
