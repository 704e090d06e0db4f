"""The serving benchmark's bookkeeping (bench/serving_compare.py) that its prefill-counted limit rests on: the
rounds each load sends, and each prompt's tokens counted as the real gateway bills them."""

from __future__ import annotations

from pathlib import Path

import openai

from bench.serving_compare import MODEL_ID, prompt_lengths, rounds_of, workload_prompts


def test_a_load_sends_its_streams_in_rounds_until_the_minimum_with_the_prompts_in_turn() -> None:
    prompts = ["a", "b", "c"]
    assert rounds_of(prompts, 1, 3) == [["a"], ["b"], ["c"]]
    assert rounds_of(prompts, 2, 3) == [["a", "b"], ["c", "a"]]
    assert rounds_of(prompts, 4, 1) == [["a", "b", "c", "a"]]


def test_each_prompt_is_counted_as_the_gateway_bills_its_prompt_tokens(model_dir: Path, client: openai.OpenAI) -> None:
    prompts = [workload_prompts("chat")[0], workload_prompts("extraction")[0]]
    lengths = prompt_lengths(model_dir, prompts)
    for prompt in prompts:
        reply = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": prompt}], max_tokens=1, temperature=0
        )
        assert reply.usage is not None
        assert lengths[prompt] == reply.usage.prompt_tokens
    assert lengths[prompts[1]] > 2 * lengths[prompts[0]] > 0  # the extraction prompt carries a document
