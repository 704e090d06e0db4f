"""Legacy completions through the official ``openai`` client against the real model."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support import MODEL


def test_string_prompt_with_exact_usage(client: openai.OpenAI, hf_tokenizer: Any) -> None:
    prompt = "The capital of France is"
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=0)
    assert reply.object == "text_completion"
    choice = reply.choices[0]
    assert choice.text
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == len(hf_tokenizer.encode(prompt, add_special_tokens=False))
    assert reply.usage.completion_tokens == len(choice.logprobs.tokens)


def test_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == 16
    assert reply.choices[0].finish_reason == "length"


def test_list_of_prompts_and_n(client: openai.OpenAI, hf_tokenizer: Any) -> None:
    prompts = ["Once upon a time", "The sky is"]
    reply = client.completions.create(model=MODEL, prompt=prompts, max_tokens=4, temperature=0, n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    singles = [
        client.completions.create(model=MODEL, prompt=p, max_tokens=4, temperature=0).choices[0].text for p in prompts
    ]
    assert [c.text for c in reply.choices] == [singles[0], singles[0], singles[1], singles[1]]
    assert reply.usage.prompt_tokens == sum(len(hf_tokenizer.encode(p, add_special_tokens=False)) for p in prompts)


def test_token_id_prompts(client: openai.OpenAI, hf_tokenizer: Any) -> None:
    text = "The sky is"
    ids = hf_tokenizer.encode(text, add_special_tokens=False)
    by_text = client.completions.create(model=MODEL, prompt=text, max_tokens=5, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    by_id_lists = client.completions.create(model=MODEL, prompt=[ids, ids], max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert [c.text for c in by_id_lists.choices] == [by_text.choices[0].text] * 2
    assert by_ids.usage.prompt_tokens == len(ids)


def test_echo_prepends_prompt(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0, echo=True)
    plain = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0)
    assert reply.choices[0].text == "The sky is" + plain.choices[0].text


def test_logprobs_shape(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=4, temperature=0, logprobs=2)
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert all(len(top) == 2 for top in lp.top_logprobs)
    assert "".join(lp.tokens) == reply.choices[0].text
    assert lp.text_offset[0] == 0
    assert lp.text_offset[1] == len(lp.tokens[0])


def test_stream_with_usage(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=8, temperature=0)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="The sky is",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"suffix": "and that is all."}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ],
)
def test_unsupported_options_are_rejected(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, **kwargs)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param
