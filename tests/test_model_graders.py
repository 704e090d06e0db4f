"""The model graders (``score_model``, ``label_model``) through the official ``openai`` client.

On a gateway in front of the instant fake engine (it always answers "The quick brown fox...", whatever the
constraint, so every judge answer is known: it never parses): what eval creation refuses, a judge answer that does not
parse being that item's error and not the run's, the judge's tokens billed to the tenant as kind ``eval``, a judge
model of another tenant, and one that is gone by the time the run starts. On the real SmolLM2 (temperature 0): a run
graded by ``string_check``, ``score_model`` and ``label_model`` together, where the structured output makes even the
135M model answer in shape every time, with per-item results, the run's tallies and the ledger to the token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import MODEL
from tests.support.evals import finished
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import admin_client, admin_usage, create_tenant, openai_client, register_adapter

JUDGE_PROMPT = [
    {"role": "system", "content": "You grade answers to geography questions."},
    {"role": "user", "content": "Question: {{item.question}}\nAnswer: {{sample.output_text}}\nIs the answer right?"},
]
SCORE = {
    "type": "score_model",
    "name": "score",
    "model": MODEL,
    "input": JUDGE_PROMPT,
    "range": [1, 5],
    "pass_threshold": 3,
}
LABEL = {
    "type": "label_model",
    "name": "label",
    "model": MODEL,
    "input": JUDGE_PROMPT,
    "labels": ["correct", "incorrect"],
    "passing_labels": ["correct"],
}
CUSTOM: Any = {"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True}
ITEMS = [
    {"item": {"question": "What is the capital of France?", "expected": "Paris"}},
    {"item": {"question": "What is the capital of Italy?", "expected": "Rome"}},
    {"item": {"question": "What is the capital of Japan?", "expected": "Tokyo"}},
]


def completions(content: list[dict[str, Any]], model: str = MODEL, max_tokens: int = 9) -> Any:
    return {
        "type": "completions",
        "model": model,
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": max_tokens},
        "source": {"type": "file_content", "content": content},
    }


def jsonl(content: list[dict[str, Any]]) -> Any:
    """A run's data source grading the samples the items bring (only the judges are called)."""
    return {"type": "jsonl", "source": {"type": "file_content", "content": content}}


# -- gateway logic, on the fake engine -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("graders")
    with fake_gateway(data_dir) as running:
        yield running.base, data_dir


@pytest.fixture(scope="module")
def fake_admin(fake: tuple[str, Path]) -> Iterator[httpx.Client]:
    with admin_client(fake[0]) as client:
        yield client


def _tenant(base: str, admin: httpx.Client, name: str, **key: Any) -> tuple[str, openai.OpenAI]:
    record, secret = create_tenant(admin, name, key or None)
    return record["id"], openai_client(base, secret)


BAD_CRITERIA: list[tuple[dict[str, Any], str]] = [
    ({**LABEL, "labels": []}, "labels"),
    ({**LABEL, "passing_labels": ["maybe"]}, "passing_labels must be among labels"),
    ({**LABEL, "labels": ["a", "a"], "passing_labels": ["a"]}, "distinct"),
    ({**LABEL, "labels": [f"l{i}" for i in range(65)], "passing_labels": ["l0"]}, "labels"),
    ({**LABEL, "labels": ["x" * 65], "passing_labels": ["x" * 65]}, "labels"),
    ({**SCORE, "range": [5, 1]}, "low < high"),
    ({**SCORE, "range": [1, 1]}, "low < high"),
    ({**SCORE, "range": [0, 1, 2]}, "range"),
    ({**SCORE, "range": [0, 1e12]}, "range"),
    ({**SCORE, "pass_threshold": 7}, "within the range"),
    ({**SCORE, "sampling_params": {"max_completions_tokens": 4096}}, "at most 128 tokens"),
    ({**SCORE, "sampling_params": {"reasoning_effort": "high"}}, "reasoning_effort"),
    ({**SCORE, "input": []}, "input"),
    ({**SCORE, "input": [{"role": "user", "content": {"type": "input_image", "image_url": "x"}}]}, "input"),
    ({**SCORE, "model": ""}, "model"),
]


def test_bad_model_graders_are_refused_when_the_eval_is_created(
    fake: tuple[str, Path], fake_admin: httpx.Client
) -> None:
    _, client = _tenant(fake[0], fake_admin, "strict")
    for criterion, fragment in BAD_CRITERIA:
        with pytest.raises(openai.BadRequestError) as info:
            client.evals.create(data_source_config=CUSTOM, testing_criteria=[criterion])  # type: ignore[list-item]
        assert fragment in info.value.message, (criterion, info.value.message)
    with pytest.raises(openai.NotFoundError) as missing:
        client.evals.create(data_source_config=CUSTOM, testing_criteria=[{**LABEL, "model": "no-such-model"}])  # type: ignore[list-item]
    assert missing.value.code == "model_not_found"
    assert missing.value.body["param"] == "testing_criteria[0].model"  # type: ignore[index]
    assert client.evals.list().data == []  # nothing was created


def test_the_judge_must_be_a_model_the_key_may_call(fake: tuple[str, Path], fake_admin: httpx.Client) -> None:
    base, data_dir = fake
    owner_id, owner = _tenant(base, fake_admin, "owner")
    _, stranger = _tenant(base, fake_admin, "stranger")
    tuned = register_adapter(data_dir, owner_id)
    created = owner.evals.create(data_source_config=CUSTOM, testing_criteria=[{**LABEL, "model": tuned}])  # type: ignore[list-item]
    assert created.testing_criteria[0].model == tuned  # type: ignore[union-attr]
    with pytest.raises(openai.NotFoundError):  # another tenant's model is as absent as a missing one
        stranger.evals.create(data_source_config=CUSTOM, testing_criteria=[{**LABEL, "model": tuned}])  # type: ignore[list-item]
    _, restricted = _tenant(base, fake_admin, "restricted", allowed_models=["some-other-model"])
    with pytest.raises(openai.PermissionDeniedError):
        restricted.evals.create(data_source_config=CUSTOM, testing_criteria=[SCORE])  # type: ignore[list-item]
    # The judge model deleted before the run: the run fails, naming it, and no item is graded.
    owner.models.delete(tuned)
    run = owner.evals.runs.create(created.id, data_source=completions(ITEMS))
    done = finished(owner, created.id, run.id)
    assert done.status == "failed" and done.error.code == "model_not_found", done.error
    assert done.result_counts.passed + done.result_counts.failed + done.result_counts.errored == 0


def test_an_unparseable_judge_answer_is_that_items_error_and_its_tokens_are_billed(
    fake: tuple[str, Path], fake_admin: httpx.Client
) -> None:
    tenant_id, client = _tenant(fake[0], fake_admin, "judged")
    capped = {**SCORE, "sampling_params": {"max_completions_tokens": 20, "temperature": 0}}
    created = client.evals.create(
        data_source_config=CUSTOM,
        testing_criteria=[capped, LABEL],  # type: ignore[list-item]
    )
    run = client.evals.runs.create(created.id, data_source=completions(ITEMS[:2]))
    done = finished(client, created.id, run.id)
    assert done.status == "completed", done.error
    assert (done.result_counts.total, done.result_counts.errored) == (2, 2)
    items = list(client.evals.runs.output_items.list(run.id, eval_id=created.id))
    for item in items:
        assert item.status == "error" and item.results == []
        assert item.sample.error.code == "grader_output_invalid"  # the fake engine never answers JSON
        assert "score" in item.sample.error.message and "token cap" in item.sample.error.message
        assert item.sample.output[0].content == "The quick"  # the sample is kept
    # Each item: its sample (9 tokens), then the score judge (its own cap, 20), which fails the item.
    usage = admin_usage(fake_admin, tenant_id, 4, kind="eval")
    assert (usage["requests"], usage["completion_tokens"]) == (4, 2 * 9 + 2 * 20)
    # A jsonl run calls only the judges: the label judge's cap is the server's (LLMAAS_EVAL_GRADER_MAX_TOKENS, 128).
    labelled = client.evals.create(data_source_config=CUSTOM, testing_criteria=[LABEL])  # type: ignore[list-item]
    given = [{**ITEMS[0], "sample": {"output_text": "Paris"}}]
    judged_only = client.evals.runs.create(labelled.id, data_source=jsonl(given))
    assert finished(client, labelled.id, judged_only.id).result_counts.errored == 1
    usage = admin_usage(fake_admin, tenant_id, 5, kind="eval")
    assert (usage["requests"], usage["completion_tokens"]) == (5, 2 * 9 + 2 * 20 + 128)


def test_a_missing_template_variable_in_a_judge_prompt_errors_that_item_only(
    fake: tuple[str, Path], fake_admin: httpx.Client
) -> None:
    _, client = _tenant(fake[0], fake_admin, "templates")
    asks_for_more = {**LABEL, "input": [{"role": "user", "content": "{{item.expected}}: {{sample.output_text}}"}]}
    created = client.evals.create(data_source_config=CUSTOM, testing_criteria=[asks_for_more])  # type: ignore[list-item]
    content = [{"item": {"question": "no expected answer"}}]
    run = client.evals.runs.create(created.id, data_source=completions(content))
    done = finished(client, created.id, run.id)
    assert (done.status, done.result_counts.errored) == ("completed", 1)
    item = next(iter(client.evals.runs.output_items.list(run.id, eval_id=created.id)))
    assert item.sample.error.code == "invalid_template" and "item.expected" in item.sample.error.message


# -- the real model as the judge -------------------------------------------------------------------------------------
def test_the_real_model_judges_in_shape_and_the_tenant_pays_for_it(server: str, admin: httpx.Client) -> None:
    tenant, key = create_tenant(admin, "judge")
    client = openai_client(server, key, timeout=600, max_retries=3)  # a loaded machine: the SDK retries a 503
    exact = {
        "type": "string_check",
        "name": "names the city",
        "input": "{{sample.output_text}}",
        "reference": "{{item.expected}}",
        "operation": "like",
    }
    created = client.evals.create(
        name="capitals, judged",
        data_source_config=CUSTOM,
        testing_criteria=[exact, SCORE, LABEL],  # type: ignore[list-item]
    )
    run = client.evals.runs.create(created.id, data_source=completions(ITEMS, max_tokens=16))
    done = finished(client, created.id, run.id, timeout=300)
    assert done.status == "completed", done.error
    counts = done.result_counts
    assert (counts.total, counts.errored) == (3, 0)  # the 135M model answered in shape every time
    assert counts.passed + counts.failed == 3
    per = {result.testing_criteria: result.passed + result.failed for result in done.per_testing_criteria_results}
    assert per == {"names the city": 3, "score": 3, "label": 3}
    items = list(client.evals.runs.output_items.list(run.id, eval_id=created.id))
    sampled = judged = 0
    for item in items:
        results = {result.name: result for result in item.results}
        score, label = results["score"], results["label"]
        assert 1 <= score.score <= 5 and score.passed == (score.score >= 3)
        assert label.label in ("correct", "incorrect") and label.passed == (label.label == "correct")
        assert item.status == ("pass" if all(r.passed for r in item.results) else "fail")
        for result in (score, label):
            judge: Any = result.sample
            assert judge is not None and judge["model"] == MODEL and judge["finish_reason"] == "stop"
            assert item.sample.output[0].content in judge["input"][1]["content"]  # the sample, rendered in
            judged += judge["usage"]["completion_tokens"]
        sampled += item.sample.usage.completion_tokens
    # Every judge call is the tenant's usage, kind eval, to the token: 3 samples and 6 judge answers.
    usage = admin_usage(admin, tenant["id"], 9, kind="eval")
    assert (usage["requests"], usage["completion_tokens"]) == (9, sampled + judged)
    # Deterministic at temperature 0: the same given samples are judged the same twice.
    given = [{**entry, "sample": {"output_text": entry["item"]["expected"]}} for entry in ITEMS]
    answers = []
    for _ in range(2):
        again = client.evals.runs.create(created.id, data_source=jsonl(given))
        assert finished(client, created.id, again.id, timeout=300).status == "completed"
        graded = client.evals.runs.output_items.list(again.id, eval_id=created.id)
        answers.append([[(r.name, r.score) for r in item.results] for item in graded])
    assert answers[0] == answers[1]


def test_a_template_that_repeats_a_large_value_is_an_error_before_its_text_is_built() -> None:
    from gateway.evals.templates import MAX_RENDERED_CHARS, TemplateError, render

    assert render("{{item.x}}!", {"item": {"x": "y"}}) == "y!"
    big = {"item": {"x": "y" * 10_000}}
    assert len(render("{{item.x}}" * 100, big)) == 1_000_000 <= MAX_RENDERED_CHARS
    with pytest.raises(TemplateError, match="longer than"):
        render("{{item.x}}" * 200, big)


@pytest.mark.parametrize("prompt", [JUDGE_PROMPT, JUDGE_PROMPT[1:]], ids=["with a system message", "without"])
def test_the_judges_answer_shape_is_asked_in_one_leading_system_message(prompt: list[dict[str, str]]) -> None:
    """Many chat templates (Llama 3, Mistral, Gemma) refuse a system message after the first turn."""
    from gateway.evals.judge import judge_request
    from gateway.evals.models import LabelModelGrader

    grader = LabelModelGrader.model_validate({**LABEL, "input": prompt})
    namespaces = {"item": {"question": "Capital of France?"}, "sample": {"output_text": "Paris"}}
    request = judge_request(grader, namespaces, 64)
    roles = [message.role for message in request.messages]
    assert roles == ["system", "user"]
    system = str(request.messages[0].content)
    assert system.endswith('the label one of "correct", "incorrect".')
    assert system.startswith("You grade") == (prompt is JUDGE_PROMPT)
    assert "Answer: Paris" in str(request.messages[1].content)
