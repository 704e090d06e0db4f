"""``/v1/evals`` through the official ``openai`` client, against a real gateway process on PostgreSQL with the
instant fake engine (it always answers "The quick brown fox...", so every grade is known in advance): evals,
runs and output items in OpenAI's shapes, graders, template variables, inline and file sources, cancellation,
tenant isolation, and the samples' tokens in the tenant's usage. The real model is evaluated in
``test_fine_tuning_e2e.py``."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.databases import fresh_postgres_database
from tests.support.evals import CRITERIA, ITEM_SCHEMA, ITEMS, completions_source, finished, make_eval
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import admin_client, admin_usage, create_tenant, openai_client


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with (
        fresh_postgres_database("llmaas_evals") as url,
        fake_gateway(tmp_path_factory.mktemp("evals"), database_url=url) as running,
    ):
        yield running.base


@pytest.fixture(scope="module")
def admin(gateway: str) -> Iterator[httpx.Client]:
    with admin_client(gateway) as client:
        yield client


def tenant(gateway: str, admin: httpx.Client, name: str, **quotas: Any) -> tuple[str, openai.OpenAI]:
    record, key = create_tenant(admin, name, **quotas)
    return record["id"], openai_client(gateway, key)


def test_a_run_samples_grades_and_reports_like_openai(gateway: str, admin: httpx.Client) -> None:
    tenant_id, client = tenant(gateway, admin, "evaluator")
    created = make_eval(client)
    assert created.id.startswith("eval_") and created.object == "eval"
    assert created.data_source_config.schema_["properties"]["item"] == ITEM_SCHEMA
    assert [c.name for c in created.testing_criteria] == ["exact", "close"]
    content = [{"item": item} for item in ITEMS]
    run = client.evals.runs.create(
        created.id, name="base", data_source=completions_source({"type": "file_content", "content": content})
    )
    assert run.object == "eval.run" and run.status in ("queued", "in_progress")
    done = finished(client, created.id, run.id)
    assert done.status == "completed", done.error
    assert (done.result_counts.total, done.result_counts.passed, done.result_counts.failed) == (3, 1, 2)
    per = {r.testing_criteria: (r.passed, r.failed) for r in done.per_testing_criteria_results}
    assert per == {"exact": (1, 2), "close": (2, 1)}
    usage = done.per_model_usage[0]
    assert usage.invocation_count == 3 and usage.completion_tokens == 27
    items = list(client.evals.runs.output_items.list(run.id, eval_id=created.id))
    assert [i.datasource_item["question"] for i in items] == ["q1", "q2", "q3"]
    assert [i.status for i in items] == ["pass", "fail", "fail"]
    first = items[0]
    assert first.sample.output[0].content == "The quick"
    assert first.sample.input[1].content == "q1"  # the template rendered with the item
    assert {r.name: r.passed for r in first.results} == {"exact": True, "close": True}
    failed = list(client.evals.runs.output_items.list(run.id, eval_id=created.id, status="fail"))
    assert len(failed) == 2
    assert client.evals.runs.output_items.retrieve(first.id, eval_id=created.id, run_id=run.id).id == first.id
    # The samples were metered like any request, as kind "eval".
    usage = admin_usage(admin, tenant_id, 3, kind="eval")
    assert usage["requests"] == 3
    assert usage["completion_tokens"] == 27


def test_a_file_source_and_ilike(gateway: str, admin: httpx.Client) -> None:
    _, client = tenant(gateway, admin, "files")
    created = client.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "mentions the fox",
                "input": "{{sample.output_text}}",
                "reference": "{{item.word}}",
                "operation": "ilike",
            }
        ],
    )
    lines = "".join(json.dumps({"item": {"word": word}}) + "\n" for word in ("FOX", "quick", "cat"))
    upload = client.files.create(file=("items.jsonl", io.BytesIO(lines.encode())), purpose="evals")
    template = [{"role": "user", "content": "Say something about a {{item.word}}."}]
    run = client.evals.runs.create(
        created.id, data_source=completions_source({"type": "file_id", "id": upload.id}, 20, template)
    )
    done = finished(client, created.id, run.id)
    assert (done.result_counts.passed, done.result_counts.failed) == (2, 1)


def test_a_jsonl_run_grades_given_samples_without_the_engine(gateway: str, admin: httpx.Client) -> None:
    _, client = tenant(gateway, admin, "jsonl")
    created = make_eval(client)
    content = [
        {"item": {"question": "a", "expected": "yes"}, "sample": {"output_text": "yes"}},
        {"item": {"question": "b", "expected": "yes"}, "sample": {"output_text": "no"}},
    ]
    run = client.evals.runs.create(
        created.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}}
    )
    done = finished(client, created.id, run.id)
    assert (done.result_counts.passed, done.result_counts.failed) == (1, 1)
    assert done.per_model_usage == []


def test_evals_are_isolated_between_tenants(gateway: str, admin: httpx.Client) -> None:
    _, owner = tenant(gateway, admin, "owner")
    _, other = tenant(gateway, admin, "other")
    created = make_eval(owner)
    run = owner.evals.runs.create(
        created.id, data_source=completions_source({"type": "file_content", "content": [{"item": ITEMS[0]}]})
    )
    with pytest.raises(openai.NotFoundError):
        other.evals.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.evals.runs.retrieve(run.id, eval_id=created.id)
    with pytest.raises(openai.NotFoundError):
        other.evals.runs.output_items.list(run.id, eval_id=created.id)
    with pytest.raises(openai.NotFoundError):
        other.evals.delete(created.id)
    assert [e.id for e in other.evals.list()] == []
    assert owner.evals.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        owner.evals.retrieve(created.id)


def test_bad_evals_and_runs_are_400s(gateway: str, admin: httpx.Client) -> None:
    _, client = tenant(gateway, admin, "strict")
    created = make_eval(client)
    bad_runs: list[tuple[dict[str, Any], str]] = [
        (completions_source({"type": "file_content", "content": [{"item": {"question": 1}}]}), "item schema"),
        ({**completions_source({"type": "file_content", "content": [{"item": ITEMS[0]}]}), "model": "nope"}, "nope"),
        (completions_source({"type": "file_id", "id": "file-missing"}), "not found"),
        ({"type": "jsonl", "source": {"type": "file_content", "content": [{"item": ITEMS[0]}]}}, "output_text"),
    ]
    for data_source, fragment in bad_runs:
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as info:
            client.evals.runs.create(created.id, data_source=data_source)  # type: ignore[arg-type]
        assert fragment in info.value.message
    with pytest.raises(openai.BadRequestError):
        client.evals.create(
            data_source_config={"type": "custom", "item_schema": {"type": "no-such-type"}},
            testing_criteria=CRITERIA,  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError):
        client.evals.create(
            data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
            testing_criteria=[{**CRITERIA[1], "evaluation_metric": "bleu"}],  # type: ignore[list-item]
        )


def test_a_missing_template_variable_errors_that_item_only(gateway: str, admin: httpx.Client) -> None:
    _, client = tenant(gateway, admin, "templates")
    created = client.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[CRITERIA[0]],  # type: ignore[list-item]
    )
    content = [{"item": {"question": "q", "expected": "The quick"}}, {"item": {"question": "no expected"}}]
    run = client.evals.runs.create(
        created.id, data_source=completions_source({"type": "file_content", "content": content})
    )
    done = finished(client, created.id, run.id)
    assert (done.result_counts.passed, done.result_counts.errored) == (1, 1)


def test_a_run_can_be_cancelled(gateway: str, admin: httpx.Client) -> None:
    _, client = tenant(gateway, admin, "canceller", max_concurrent_requests=1, requests_per_minute=5)
    created = make_eval(client)
    content = [{"item": ITEMS[0]}] * 50  # 5 requests a minute: this run would take ten minutes
    run = client.evals.runs.create(
        created.id, data_source=completions_source({"type": "file_content", "content": content})
    )
    time.sleep(1)
    cancelled = client.evals.runs.cancel(run.id, eval_id=created.id)
    assert cancelled.status == "canceled"
    time.sleep(3)
    after = client.evals.runs.retrieve(run.id, eval_id=created.id)
    assert after.status == "canceled" and after.result_counts.total == 50
    assert after.result_counts.passed + after.result_counts.failed < 50
