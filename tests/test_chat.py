"""Chat completions through the official ``openai`` client against the real SmolLM2 on vLLM."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support import MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_with_exact_usage(client: openai.OpenAI, hf_tokenizer: Any) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, logprobs=True)
    choice = reply.choices[0]
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    # Prompt tokens: the model's own chat template, tokenized by the model's tokenizer.
    rendered = hf_tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(hf_tokenizer.encode(rendered, add_special_tokens=False))
    # Completion tokens: one logprob per generated token, the end-of-turn token included.
    assert reply.usage.completion_tokens == len(choice.logprobs.content)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_temperature_zero_is_deterministic(client: openai.OpenAI) -> None:
    texts = {
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=30, temperature=0
        )
        .choices[0]
        .message.content
        for _ in range(3)
    }
    assert len(texts) == 1


def test_seed_reproduces_sampling(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write a poem about the sea."}],
            max_tokens=24,
            temperature=1.2,
            seed=seed,
        )
        return reply.choices[0].message.content or ""

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in (1, 2, 3)}) > 1


def test_max_tokens_and_max_completion_tokens_give_length(client: openai.OpenAI) -> None:
    for limit in ({"max_tokens": 3}, {"max_completion_tokens": 3}, {"max_tokens": 50, "max_completion_tokens": 3}):
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a long story."}], temperature=0, **limit
        )
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 3


def test_stop_sequence_ends_with_stop(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    assert "Paris" in full.choices[0].message.content
    cut = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, stop=["Paris", "London"]
    )
    text = cut.choices[0].message.content
    assert "Paris" not in text
    assert full.choices[0].message.content.startswith(text)
    assert cut.choices[0].finish_reason == "stop"


def test_n_choices(client: openai.OpenAI) -> None:
    sampled = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=1.0, n=3, seed=1)
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert sampled.usage.completion_tokens > 0
    greedy = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, n=2)
    assert len(greedy.choices) == 2
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    single = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
    assert greedy.usage.prompt_tokens == single.usage.prompt_tokens
    assert greedy.usage.completion_tokens == 2 * single.usage.completion_tokens


def test_top_p_tiny_equals_greedy(client: openai.OpenAI) -> None:
    prompt = [{"role": "user", "content": "Name three fruits."}]
    greedy = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=16, temperature=0)
    nucleus = client.chat.completions.create(
        model=MODEL, messages=prompt, max_tokens=16, temperature=1.5, top_p=0.0, seed=3
    )
    assert nucleus.choices[0].message.content == greedy.choices[0].message.content


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_penalties_reduce_repetition(client: openai.OpenAI, penalty: str) -> None:
    prompt = [{"role": "user", "content": "Tell me a story about a cat."}]

    def story(**kwargs: float) -> str:
        reply = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=40, temperature=0, **kwargs)
        return reply.choices[0].message.content or ""

    plain, penalised, encouraged = story(), story(**{penalty: 2.0}), story(**{penalty: -2.0})
    assert plain.count(" cat") > penalised.count(" cat")
    assert encouraged.count(" cat") > plain.count(" cat")


def test_top_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for token in content:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3
        values = [alt.logprob for alt in token.top_logprobs]
        assert values == sorted(values, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert token.token == token.top_logprobs[0].token
        assert token.bytes == list(token.token.encode())
    assert "".join(t.token for t in content).startswith("The capital")


def test_content_parts_system_and_user_fields(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "You answer in one word."},
            {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
        ],
        max_tokens=8,
        temperature=0,
        user="user-1234",
    )
    assert reply.choices[0].message.content


def test_stream_matches_non_stream_and_reports_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_option_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0, stream=True)
    )
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_concurrent_requests_are_batched_and_all_answer(client: openai.OpenAI) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def ask(i: int) -> str:
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=12, temperature=0
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(2, 10)))
    assert all(answers)
