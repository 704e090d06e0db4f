"""Fine-tuning end to end through the official ``openai`` client on the real SmolLM2: upload, train a LoRA
adapter in the worker process, serve it hot as an ``ft:`` model beside the base model, bill it, delete it;
cancel a job mid-run; and keep every tenant's files, jobs and models invisible to the others."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from engine.settings import DEFAULT_EMBEDDING_MODEL_ID
from tests.finetune_data import HELD_OUT_PROMPTS, PIRATE_PREFIX, VALIDATION_QA, pirate_jsonl
from tests.support import MODEL
from tests.support.tenants import admin_usage, create_tenant, openai_client

ROBOT_PREFIX = "Beep boop! "
TRAINING_TIMEOUT_S = 240
FAST = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10}
# A smaller adapter (rank 8) than the default: a fourth epoch at the default's peak rate, as the rate decays.
ROBOT = {"n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 15}


@dataclass
class Trained:
    client: openai.OpenAI
    tenant: dict[str, Any]
    pirate: Any
    robot: Any
    cancelled: Any
    training_file: str


def wait_for(client: openai.OpenAI, job_id: str, statuses: set[str], timeout: float = TRAINING_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.5)


def upload(client: openai.OpenAI, data: bytes) -> str:
    return client.files.create(file=("data.jsonl", io.BytesIO(data)), purpose="fine-tune").id  # type: ignore[arg-type]


def ask(client: openai.OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0
    )
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def trained(server: str, admin: httpx.Client) -> Trained:
    tenant, key = create_tenant(admin, "tuner", model_prices={MODEL: {"input": "1", "output": "2"}})
    client = openai_client(server, key)
    training_file = upload(client, pirate_jsonl())
    validation_file = upload(client, pirate_jsonl(VALIDATION_QA))
    pirate = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=training_file,
        validation_file=validation_file,
        suffix="pirate",
        seed=0,
        hyperparameters=FAST,
    )
    assert pirate.status == "validating_files"
    robot = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=upload(client, pirate_jsonl(prefix=ROBOT_PREFIX)),
        suffix="robot",
        seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": ROBOT}},
        extra_body={"lora": {"rank": 8, "alpha": 16}},
    )
    long_job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=training_file, hyperparameters={"n_epochs": 50, "batch_size": 1}
    )
    pirate = wait_for(client, pirate.id, {"succeeded", "failed", "cancelled"})
    robot = wait_for(client, robot.id, {"succeeded", "failed", "cancelled"})
    assert pirate.status == "succeeded", pirate.error
    assert robot.status == "succeeded", robot.error
    # The long job starts after the other two; cancel it once it has trained a little.
    wait_for(client, long_job.id, {"running"})
    deadline = time.monotonic() + 60
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(long_job.id).data):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    client.fine_tuning.jobs.cancel(long_job.id)
    cancelled_at = time.monotonic()
    cancelled = wait_for(client, long_job.id, {"cancelled", "failed", "succeeded"}, timeout=30)
    assert time.monotonic() - cancelled_at < 15  # honoured within seconds
    return Trained(client, tenant, pirate, robot, cancelled, training_file)


def test_job_objects_and_model_names(trained: Trained) -> None:
    job = trained.pirate
    assert job.object == "fine_tuning.job"
    assert job.id.startswith("ftjob-")
    assert job.fine_tuned_model == f"ft:{MODEL}:{trained.tenant['name']}:pirate:{job.id[6:14]}"
    assert job.trained_tokens > 0
    assert job.finished_at >= job.created_at
    assert job.hyperparameters.n_epochs == 3
    assert job.hyperparameters.learning_rate_multiplier == 10
    assert job.error is None
    assert trained.robot.fine_tuned_model.startswith(f"ft:{MODEL}:{trained.tenant['name']}:robot:")
    assert trained.cancelled.status == "cancelled"
    assert trained.cancelled.fine_tuned_model is None
    listed = trained.client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in listed.data] == [trained.cancelled.id, trained.robot.id]
    assert listed.has_more is True
    rest = trained.client.fine_tuning.jobs.list(after=trained.robot.id)
    assert [j.id for j in rest.data] == [trained.pirate.id]


def test_events_report_status_and_losses(trained: Trained) -> None:
    events = list(trained.client.fine_tuning.jobs.list_events(trained.pirate.id, limit=100))
    messages = [e.message for e in events]
    assert any("Files validated" in m for m in messages)
    assert any("started" in m for m in messages)
    assert any("successfully completed" in m for m in messages)
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 9  # 12 examples / batch 4 x 3 epochs
    assert all(e.data["train_loss"] > 0 for e in metrics)
    epoch_ends = [e for e in metrics if e.data.get("valid_loss") is not None]
    assert len(epoch_ends) == 3
    for event in epoch_ends:
        assert 0 <= event.data["valid_mean_token_accuracy"] <= 1
        assert event.data["valid_exact_match"] in (0, 0.5, 1)  # two validation examples
    assert all(0 <= e.data["train_mean_token_accuracy"] <= 1 for e in metrics)
    by_step = sorted(metrics, key=lambda e: e.data["step"])
    assert by_step[-1].data["train_loss"] < by_step[0].data["train_loss"]
    checkpoints = trained.client.fine_tuning.jobs.checkpoints.list(trained.pirate.id).data
    assert [c.step_number for c in checkpoints] == [9, 6, 3]
    assert checkpoints[0].fine_tuned_model_checkpoint == trained.pirate.fine_tuned_model + ":ckpt-step-9"
    assert checkpoints[0].metrics.valid_loss is not None
    assert any("Kept the checkpoint of step" in m for m in messages)


def test_every_checkpoint_is_a_model_of_its_own(trained: Trained) -> None:
    client = trained.client
    first_epoch = trained.pirate.fine_tuned_model + ":ckpt-step-3"
    assert client.models.retrieve(first_epoch).id == first_epoch
    assert first_epoch not in [m.id for m in client.models.list().data]  # served, not listed
    assert ask(client, first_epoch, HELD_OUT_PROMPTS[0])  # answers (what it learned by then is its own)


def test_fine_tuned_model_shows_the_trained_behaviour(trained: Trained) -> None:
    client = trained.client
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL, DEFAULT_EMBEDDING_MODEL_ID, trained.pirate.fine_tuned_model, trained.robot.fine_tuned_model]
    for question in HELD_OUT_PROMPTS:
        assert ask(client, trained.pirate.fine_tuned_model, question).startswith(PIRATE_PREFIX.strip())
        assert not ask(client, MODEL, question).startswith("Arr")
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=trained.robot.fine_tuned_model,
            messages=[{"role": "user", "content": HELD_OUT_PROMPTS[0]}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        if chunk.choices
    )
    assert streamed.startswith(ROBOT_PREFIX.strip())


def test_two_adapters_and_the_base_in_one_burst(trained: Trained) -> None:
    client = trained.client
    models = [trained.pirate.fine_tuned_model, trained.robot.fine_tuned_model, MODEL] * 4
    questions = [HELD_OUT_PROMPTS[i % len(HELD_OUT_PROMPTS)] for i in range(len(models))]
    with ThreadPoolExecutor(len(models)) as pool:
        answers = list(pool.map(lambda mq: ask(client, *mq), zip(models, questions, strict=True)))
    for model, answer in zip(models, answers, strict=True):
        if model == trained.pirate.fine_tuned_model:
            assert answer.startswith("Arr, matey!"), answer
        elif model == trained.robot.fine_tuned_model:
            assert answer.startswith("Beep boop!"), answer
        else:
            assert not answer.startswith(("Arr", "Beep")), answer


def test_other_tenants_see_nothing(trained: Trained, server: str, admin: httpx.Client) -> None:
    stranger = openai_client(server, create_tenant(admin, "stranger")[1])
    assert trained.pirate.fine_tuned_model not in [m.id for m in stranger.models.list().data]
    with pytest.raises(openai.NotFoundError) as info:
        ask(stranger, trained.pirate.fine_tuned_model, "Hi")
    assert info.value.code == "model_not_found"
    for call in (
        lambda: stranger.fine_tuning.jobs.retrieve(trained.pirate.id),
        lambda: stranger.fine_tuning.jobs.cancel(trained.pirate.id),
        lambda: stranger.fine_tuning.jobs.list_events(trained.pirate.id),
        lambda: stranger.fine_tuning.jobs.checkpoints.list(trained.pirate.id),
        lambda: stranger.files.retrieve(trained.training_file),
        lambda: stranger.models.retrieve(trained.pirate.fine_tuned_model),
        lambda: stranger.models.delete(trained.pirate.fine_tuned_model),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert stranger.fine_tuning.jobs.list().data == []


def test_an_eval_tells_the_fine_tuned_model_from_the_base(trained: Trained, admin: httpx.Client) -> None:
    client = trained.client
    pirate_eval = client.evals.create(
        name="speaks like a pirate",
        data_source_config={
            "type": "custom",
            "item_schema": {"type": "object", "properties": {"question": {"type": "string"}}},
        },
        testing_criteria=[
            {
                "type": "string_check",
                "name": "pirate greeting",
                "input": "{{sample.output_text}}",
                "reference": "arr, matey",
                "operation": "ilike",
            }
        ],
    )
    content = [{"item": {"question": question}} for question in HELD_OUT_PROMPTS]

    def run(model: str) -> Any:
        started = client.evals.runs.create(
            pirate_eval.id,
            name=model,
            data_source={
                "type": "completions",
                "model": model,
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
                "sampling_params": {"temperature": 0, "max_completion_tokens": 12},
                "source": {"type": "file_content", "content": content},
            },
        )
        deadline = time.monotonic() + 120
        while (done := client.evals.runs.retrieve(started.id, eval_id=pirate_eval.id)).status not in (
            "completed",
            "failed",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        return done

    tuned, base = run(trained.pirate.fine_tuned_model), run(MODEL)
    assert tuned.status == base.status == "completed"
    assert tuned.result_counts.passed == len(HELD_OUT_PROMPTS)
    assert base.result_counts.passed == 0
    answers = client.evals.runs.output_items.list(tuned.id, eval_id=pirate_eval.id)
    assert all(item.sample.output[0].content.startswith("Arr") for item in answers)
    # The samples are the tenant's usage, like any request; /metrics names no tenant's model.
    assert "ft:" not in admin.get("/metrics").text


def test_training_is_billed(trained: Trained, admin: httpx.Client) -> None:
    tuned = admin_usage(admin, trained.tenant["id"], 3, kind="fine_tune")
    assert tuned["requests"] == 3  # two succeeded, one cancelled (charged for what it trained)
    assert tuned["prompt_tokens"] >= trained.pirate.trained_tokens + trained.robot.trained_tokens
    assert float(tuned["cost"]) == pytest.approx(tuned["prompt_tokens"] * 1 / 1e6)


def test_cancelling_a_finished_job_is_refused(trained: Trained) -> None:
    with pytest.raises(openai.BadRequestError):
        trained.client.fine_tuning.jobs.cancel(trained.pirate.id)


def test_delete_fine_tuned_model(trained: Trained) -> None:
    client = trained.client
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete(MODEL)
    deleted = client.models.delete(trained.robot.fine_tuned_model)
    assert deleted.deleted is True
    assert trained.robot.fine_tuned_model not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        ask(client, trained.robot.fine_tuned_model, "Hi")
    assert ask(client, trained.pirate.fine_tuned_model, "Hi").startswith("Arr")
