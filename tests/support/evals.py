"""Evals whose grades are known in advance: the instant fake engine always answers "The quick brown fox...", so
the items below grade exact and close, close only, and neither; and waiting for a run to end."""

from __future__ import annotations

import time
from typing import Any

import openai

from tests.support import MODEL

ITEM_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "expected": {"type": "string"}},
    "required": ["question", "expected"],
}
TEMPLATE = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "{{item.question}}"},
]
CRITERIA = [
    {
        "type": "string_check",
        "name": "exact",
        "input": "{{sample.output_text}}",
        "reference": "{{item.expected}}",
        "operation": "eq",
    },
    {
        "type": "text_similarity",
        "name": "close",
        "input": "{{sample.output_text}}",
        "reference": "{{item.expected}}",
        "evaluation_metric": "fuzzy_match",
        "pass_threshold": 0.6,
    },
]
# The fake engine spells "The quick brown fox jumps over the lazy dog. " one byte per token.
ITEMS = [
    {"question": "q1", "expected": "The quick"},  # exact and close
    {"question": "q2", "expected": "The quack"},  # not exact, close
    {"question": "q3", "expected": "A lazy dog"},  # neither
]


def finished(client: openai.OpenAI, eval_id: str, run_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled") or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def make_eval(client: openai.OpenAI) -> Any:
    return client.evals.create(
        name="known answers",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=CRITERIA,  # type: ignore[arg-type]
        metadata={"team": "qa"},
    )


def completions_source(
    source: dict[str, Any], max_tokens: int = 9, template: list[dict[str, str]] = TEMPLATE
) -> dict[str, Any]:
    return {
        "type": "completions",
        "model": MODEL,
        "input_messages": {"type": "template", "template": template},
        "sampling_params": {"temperature": 0, "max_completion_tokens": max_tokens},
        "source": source,
    }
