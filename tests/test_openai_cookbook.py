"""OpenAI's own walkthroughs, run against this server unchanged but for where the client points: the script builds
``OpenAI()`` with no arguments, and only ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` differ from OpenAI's.

- Fine-tuning (the cookbook's "How to fine-tune chat models"): upload a JSONL file from disk, create a job with a
  suffix and a seed, poll it, list the jobs, read its events and checkpoints, and chat with the fine-tuned model.
  The one departure: the job names small hyperparameters (OpenAI's ``method`` shape), so that it trains in seconds.
- Evals (OpenAI's evals guide, "IT ticket categorization"): an eval with a ``custom`` data source config and
  ``include_sample_schema``, a ``string_check`` and a ``label_model`` grader, test data uploaded as a ``purpose:
  "evals"`` file, a run with the guide's ``responses`` data source on the fine-tuned model and one with a
  ``completions`` data source on the base model, polled, listed, and their output items read. The departure: both
  runs bound their sampling (``temperature`` 0, ``max_completion_tokens``), so that they take seconds.

The real SmolLM2 answers; what it answers is not the point (quality is measured elsewhere), the flow is."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.finetune_data import PIRATE_PREFIX, pirate_jsonl
from tests.support import MODEL
from tests.support.tenants import create_tenant

TICKETS = [
    {"ticket_text": "My monitor won't turn on!", "correct_label": "Hardware"},
    {"ticket_text": "I'm in vim and I can't quit!", "correct_label": "Software"},
    {"ticket_text": "Best restaurants in Cleveland?", "correct_label": "Other"},
    {"ticket_text": "My keyboard is missing the letter E.", "correct_label": "Hardware"},
]
INSTRUCTIONS = (
    "You are an expert in categorizing IT support tickets. Given the support ticket below, categorize the request "
    "into one of Hardware, Software, or Other. Respond with only one of those words."
)


@dataclass
class Walkthrough:
    client: OpenAI
    tenant_id: str
    job: Any
    events: list[Any]
    checkpoints: list[Any]


@pytest.fixture(scope="module")
def walkthrough(server: str, admin: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walkthrough]:
    """The fine-tuning walkthrough, as the cookbook writes it (the client from the environment)."""
    tenant, key = create_tenant(admin, "cookbook")
    workdir = tmp_path_factory.mktemp("cookbook")
    training_file_name = workdir / "pirate_train.jsonl"
    training_file_name.write_bytes(pirate_jsonl())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_BASE_URL", f"{server}/v1")
        env.setenv("OPENAI_API_KEY", key)
        client = OpenAI()
        with open(training_file_name, "rb") as training_fd:
            training_response = client.files.create(file=training_fd, purpose="fine-tune")
        training_file_id = training_response.id
        response = client.fine_tuning.jobs.create(
            training_file=training_file_id,
            model=MODEL,
            suffix="pirate",
            seed=42,
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10}},
            },
        )
        job_id = response.id
        deadline = time.monotonic() + 300
        while (response := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, response.status
            time.sleep(1)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        events.reverse()
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
        yield Walkthrough(client, tenant["id"], response, events, checkpoints)


def test_the_fine_tuning_walkthrough(walkthrough: Walkthrough) -> None:
    client, job = walkthrough.client, walkthrough.job
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith(f"ft:{MODEL}:") and ":pirate:" in job.fine_tuned_model
    assert job.seed == 42 and job.trained_tokens > 0
    assert job.method.type == "supervised" and job.method.supervised.hyperparameters.n_epochs == 3
    assert [j.id for j in client.fine_tuning.jobs.list(limit=10).data] == [job.id]
    messages = [event.message for event in walkthrough.events]
    assert any("successfully completed" in message for message in messages)
    assert [event.type for event in walkthrough.events].count("metrics") == 9  # 12 examples / 4 a batch x 3 epochs
    assert [c.step_number for c in walkthrough.checkpoints] == [9, 6, 3]
    assert walkthrough.checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-9"
    fine_tuned_model_id = job.fine_tuned_model
    test_messages = [{"role": "user", "content": "What is the largest planet?"}]
    response = client.chat.completions.create(
        model=fine_tuned_model_id,
        messages=test_messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=24,
    )
    assert response.model == fine_tuned_model_id
    assert (response.choices[0].message.content or "").startswith(PIRATE_PREFIX.strip())


def test_the_evals_walkthrough(walkthrough: Walkthrough, tmp_path: Path) -> None:
    client = walkthrough.client
    eval_obj = client.evals.create(
        name="IT Ticket Categorization",
        data_source_config={
            "type": "custom",
            "item_schema": {
                "type": "object",
                "properties": {"ticket_text": {"type": "string"}, "correct_label": {"type": "string"}},
                "required": ["ticket_text", "correct_label"],
            },
            "include_sample_schema": True,
        },
        testing_criteria=[
            {
                "type": "string_check",
                "name": "Match output to human label",
                "input": "{{ sample.output_text }}",
                "operation": "eq",
                "reference": "{{ item.correct_label }}",
            },
            {
                "type": "label_model",
                "name": "Category judged by a model",
                "model": MODEL,
                "input": [
                    {"role": "developer", "content": INSTRUCTIONS},
                    {"role": "user", "content": "Ticket: {{ item.ticket_text }}\nAnswer: {{ sample.output_text }}"},
                ],
                "labels": ["Hardware", "Software", "Other"],
                "passing_labels": ["Hardware", "Software"],
            },
        ],
    )
    assert eval_obj.object == "eval" and eval_obj.data_source_config.type == "custom"
    tickets = tmp_path / "tickets.jsonl"
    tickets.write_text("".join(json.dumps({"item": ticket}) + "\n" for ticket in TICKETS))
    file = client.files.create(file=open(tickets, "rb"), purpose="evals")  # noqa: SIM115 (the guide's own line)
    template = [
        {"role": "developer", "content": INSTRUCTIONS},
        {"role": "user", "content": "{{ item.ticket_text }}"},
    ]
    responses_source: Any = {  # the guide's run, on the fine-tuned model (sampling bounded: a test's seconds)
        "type": "responses",
        "model": walkthrough.job.fine_tuned_model,
        "input_messages": {"type": "template", "template": template},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 16},
        "source": {"type": "file_id", "id": file.id},
    }
    completions_source: Any = {  # the API reference's, on the base model
        "type": "completions",
        "model": MODEL,
        "input_messages": {"type": "template", "template": template},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 8},
        "source": {"type": "file_id", "id": file.id},
    }
    tuned_run = client.evals.runs.create(eval_obj.id, name="Categorization text run", data_source=responses_source)
    base_run = client.evals.runs.create(eval_obj.id, name="Base model run", data_source=completions_source)
    assert tuned_run.status == "queued" and tuned_run.data_source.type == "responses"
    for run_id in (tuned_run.id, base_run.id):
        deadline = time.monotonic() + 300
        while (run := client.evals.runs.retrieve(run_id, eval_id=eval_obj.id)).status in ("queued", "in_progress"):
            assert time.monotonic() < deadline
            time.sleep(1)
        assert run.status == "completed", run.error
        counts = run.result_counts
        assert (counts.total, counts.errored, counts.passed + counts.failed) == (4, 0, 4)
        assert [r.testing_criteria for r in run.per_testing_criteria_results] == [
            "Match output to human label",
            "Category judged by a model",
        ]
        assert run.per_model_usage[0].invocation_count == 4
        output_items = list(client.evals.runs.output_items.list(run_id=run.id, eval_id=eval_obj.id))
        assert [item.datasource_item["ticket_text"] for item in output_items] == [t["ticket_text"] for t in TICKETS]
        for item in output_items:
            assert item.sample.output[0].content
            assert [result.name for result in item.results] == [
                "Match output to human label",
                "Category judged by a model",
            ]
            assert item.results[1].label in ("Hardware", "Software", "Other")
    assert [r.id for r in client.evals.runs.list(eval_obj.id).data] == [tuned_run.id, base_run.id]
    tuned_answers = client.evals.runs.output_items.list(run_id=tuned_run.id, eval_id=eval_obj.id)
    assert all(
        (item.sample.output[0].content or "").startswith("Arr") for item in tuned_answers
    )  # the tuned model's voice
