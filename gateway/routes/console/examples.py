"""The API calls the console's pages offer to copy when they have nothing to show yet: each one a real request
(method, path, JSON body or form fields) written out as a ``curl`` command against this gateway, so what a page
teaches is what the API takes (``tests/test_console_teaching.py`` sends every one). A value the caller must fill
in is a ``PLACEHOLDER`` the page's script replaces when it knows it (the eval a run is for, the file just
uploaded)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FILE_ID = "FILE_ID"
EVAL_ID = "EVAL_ID"
SAMPLES = ("chat-sft.jsonl", "dpo.jsonl")
"""The sample training files under ``/console/static/samples/``: chat (supervised) and preference (DPO) lines."""


@dataclass(frozen=True)
class Example:
    method: str
    path: str
    body: dict[str, Any] | None = None
    form: tuple[tuple[str, str], ...] = field(default=())
    """Multipart fields, as curl's ``-F`` takes them (``@name`` is a file)."""

    def curl(self, base: str) -> str:
        lines = [f"curl {base.rstrip('/')}{self.path}", '-H "Authorization: Bearer $OPENAI_API_KEY"']
        if self.body is not None:
            lines += ['-H "Content-Type: application/json"', f"-d '{json.dumps(self.body, indent=2)}'"]
        lines += [f"-F {name}={value}" for name, value in self.form]
        return " \\\n  ".join(lines)


CAPITALS_EVAL = {
    "name": "capitals",
    "data_source_config": {
        "type": "custom",
        "item_schema": {
            "type": "object",
            "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["question", "answer"],
        },
        "include_sample_schema": True,
    },
    "testing_criteria": [
        {
            "type": "string_check",
            "name": "names the capital",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "ilike",
        }
    ],
}


def examples(model: str) -> dict[str, Example]:
    """Every call a page teaches, on ``model`` (a model this gateway serves)."""
    run_source = {
        "type": "completions",
        "model": model,
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 16},
        "source": {
            "type": "file_content",
            "content": [
                {"item": {"question": "What is the capital of France? One word.", "answer": "Paris"}},
                {"item": {"question": "What is the capital of Italy? One word.", "answer": "Rome"}},
            ],
        },
    }
    return {
        "chat": Example(
            "POST",
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "Say hello in five words."}]},
        ),
        "upload": Example("POST", "/v1/files", form=(("purpose", "fine-tune"), ("file", f"@{SAMPLES[0]}"))),
        "job": Example("POST", "/v1/fine_tuning/jobs", {"model": model, "training_file": FILE_ID}),
        "eval": Example("POST", "/v1/evals", CAPITALS_EVAL),
        "run": Example("POST", f"/v1/evals/{EVAL_ID}/runs", {"name": "first run", "data_source": run_source}),
        "alias": Example("POST", "/v1/aliases", {"name": "production", "model": model}),
    }


def curls(base: str, model: str) -> dict[str, str]:
    """``examples`` as the curl commands a page shows."""
    return {name: example.curl(base) for name, example in examples(model).items()}
