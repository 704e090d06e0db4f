"""Continued fine-tuning: a job whose ``model`` is one of the tenant's ``ft:`` models trains a copy of that model's
adapter. Through the official ``openai`` client on a real gateway: the job and the new model show their lineage,
the new model serves and so does its parent (and keeps serving once the parent is deleted), training starts from
the parent's weights, another tenant's model is unknown, a different LoRA shape is refused. And on the model
itself: the starting weights are the parent's, and the reference model a continued job starts from is the parent."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from adapters.trainable import LoraSpec, TrainableModel
from tests.finetune_data import PIRATE_PREFIX, pirate_jsonl
from tests.support import MODEL
from tests.support.tenants import create_tenant, openai_client

TRAINING_TIMEOUT_S = 600
FAST = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10}
ONE_EPOCH = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1}
SMALL = LoraSpec(rank=4, alpha=8, target_modules=("q_proj", "v_proj"), layers=2)


# -- the starting weights (unit, on the real model) ------------------------------------------------------------------
def lora_weights(model: TrainableModel, adapter: str = "default") -> dict[str, torch.Tensor]:
    return {
        name.replace(f".{adapter}.", "."): param.detach().clone()
        for name, param in model.model.named_parameters()
        if "lora_" in name and f".{adapter}." in name
    }


@pytest.fixture(scope="module")
def parent_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved adapter whose weights are not the fresh ones (LoRA B starts at zero)."""
    parent = TrainableModel(model_dir, SMALL, pad_id=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in parent.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    directory = tmp_path_factory.mktemp("parent")
    parent.save(directory)
    return directory


def test_a_continued_model_starts_from_the_parents_weights_and_its_reference_is_the_parent(
    model_dir: Path, parent_dir: Path
) -> None:
    fresh = TrainableModel(model_dir, SMALL, pad_id=0)
    child = TrainableModel(model_dir, SMALL, pad_id=0, start_from=parent_dir)
    saved = TrainableModel(model_dir, SMALL, pad_id=0, start_from=parent_dir)
    started = lora_weights(child)
    assert started.keys() == lora_weights(fresh).keys()
    assert all(torch.equal(started[name], weight) for name, weight in lora_weights(saved).items())
    assert any(not torch.equal(started[name], weight) for name, weight in lora_weights(fresh).items())

    # Train the child a step: the reference stays the parent, frozen, and training resumes on the trained adapter.
    trainable = child.parameters()
    optimizer = torch.optim.SGD(trainable, lr=1.0)
    probe = torch.arange(1, 9).unsqueeze(0)
    child.model(input_ids=probe).logits.sum().backward()
    optimizer.step()
    with torch.no_grad():
        parent_logits = saved.model(input_ids=probe).logits
        trained_logits = child.model(input_ids=probe).logits
        with child.reference():
            reference_logits = child.model(input_ids=probe).logits
        with fresh.reference():  # from the base model, the reference is the base model
            base_logits = fresh.model(input_ids=probe).logits
            with fresh.model.disable_adapter():
                assert torch.equal(base_logits, fresh.model(input_ids=probe).logits)
    assert torch.allclose(reference_logits, parent_logits, atol=1e-5)
    assert not torch.allclose(trained_logits, parent_logits, atol=1e-3)
    assert child.parameters() == trainable  # the reference's copy never trains
    assert all(torch.equal(w, lora_weights(saved)[n]) for n, w in lora_weights(child, "reference").items())
    with torch.no_grad():
        assert torch.equal(child.model(input_ids=probe).logits, trained_logits)


def test_an_adapter_of_another_shape_is_not_a_start(model_dir: Path, parent_dir: Path) -> None:
    for other in (LoraSpec(rank=8, alpha=8, target_modules=SMALL.target_modules, layers=2), LoraSpec(layers=2)):
        with pytest.raises(ValueError, match="another LoRA shape"):
            TrainableModel(model_dir, other, pad_id=0, start_from=parent_dir)


# -- through the API --------------------------------------------------------------------------------------------
@dataclass
class Lineage:
    client: openai.OpenAI
    tenant: dict[str, Any]
    parent: Any
    child: Any
    training_file: str


def wait_for(client: openai.OpenAI, job_id: str) -> Any:
    deadline = time.monotonic() + TRAINING_TIMEOUT_S
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.5)
    assert job.status == "succeeded", job.error
    return job


def first_loss(client: openai.OpenAI, job_id: str) -> float:
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    return min((e.data["step"], e.data["train_loss"]) for e in events if e.type == "metrics" and e.data)[1]


def ask(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the largest planet?"}], max_tokens=16, temperature=0
    )
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def lineage(server: str, admin: httpx.Client) -> Lineage:
    tenant, key = create_tenant(admin, "heir")
    client = openai_client(server, key)
    training_file = client.files.create(file=("pirate.jsonl", io.BytesIO(pirate_jsonl())), purpose="fine-tune").id
    parent = client.fine_tuning.jobs.create(
        model=MODEL, training_file=training_file, suffix="parent", seed=0, hyperparameters=FAST
    )
    parent = wait_for(client, parent.id)
    # One gentle epoch on the data the parent learnt: it starts where the parent ended, at a low loss.
    child = client.fine_tuning.jobs.create(
        model=parent.fine_tuned_model, training_file=training_file, suffix="child", seed=0, hyperparameters=ONE_EPOCH
    )
    return Lineage(client, tenant, parent, wait_for(client, child.id), training_file)


def test_the_continued_job_and_model_show_their_lineage(lineage: Lineage) -> None:
    client, parent, child = lineage.client, lineage.parent, lineage.child
    assert child.model == parent.fine_tuned_model
    assert child.fine_tuned_model == f"ft:{MODEL}:{lineage.tenant['name']}:child:{child.id[6:14]}"  # on the base
    assert child.model_extra["lineage"] == {"base_model": MODEL, "parents": [parent.fine_tuned_model]}
    assert parent.model_extra["lineage"] == {"base_model": MODEL, "parents": []}
    assert child.model_extra["lora"] == parent.model_extra["lora"]  # the parent's shape, layers and all
    card = client.models.retrieve(child.fine_tuned_model)
    assert (card.model_extra or {}) == {
        "root": MODEL,
        "parent": parent.fine_tuned_model,
        "fine_tuning_job_id": child.id,
    }
    parent_card = client.models.retrieve(parent.fine_tuned_model)
    assert (parent_card.model_extra or {})["parent"] == MODEL
    listed = {m.id: m for m in client.models.list().data}
    assert (listed[child.fine_tuned_model].model_extra or {})["parent"] == parent.fine_tuned_model


def test_training_starts_from_the_parents_weights(lineage: Lineage) -> None:
    client = lineage.client
    # The parent's first step saw the base model's loss on this data; the child's sees the parent's, far lower.
    assert first_loss(client, lineage.child.id) < 0.5 * first_loss(client, lineage.parent.id)
    assert ask(client, lineage.child.fine_tuned_model).startswith(PIRATE_PREFIX.strip())


def test_a_checkpoint_can_be_continued(lineage: Lineage) -> None:
    client = lineage.client
    checkpoint = client.fine_tuning.jobs.checkpoints.list(lineage.parent.id, limit=1).data[0]
    name = checkpoint.fine_tuned_model_checkpoint
    job = client.fine_tuning.jobs.create(model=name, training_file=lineage.training_file)
    client.fine_tuning.jobs.cancel(job.id)
    assert job.model_extra["lineage"] == {"base_model": MODEL, "parents": [name]}


def test_another_tenants_or_an_unknown_model_is_not_found_and_another_shape_is_refused(
    lineage: Lineage, server: str, admin: httpx.Client
) -> None:
    _, key = create_tenant(admin, "stranger")
    stranger = openai_client(server, key)
    file_id = stranger.files.create(file=("p.jsonl", io.BytesIO(pirate_jsonl())), purpose="fine-tune").id
    unknown = lineage.parent.fine_tuned_model.replace(lineage.parent.id[6:14], "00000000")
    for model in (lineage.parent.fine_tuned_model, unknown):
        with pytest.raises(openai.NotFoundError) as info:
            stranger.fine_tuning.jobs.create(model=model, training_file=file_id)
        assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):  # the owner's unknown model: the same answer
        lineage.client.fine_tuning.jobs.create(model=unknown, training_file=lineage.training_file)
    for shape in ({"rank": 8}, {"target_modules": ["q_proj"]}, {"layers": 3}):
        with pytest.raises(openai.BadRequestError) as refused:
            lineage.client.fine_tuning.jobs.create(
                model=lineage.parent.fine_tuned_model, training_file=lineage.training_file, extra_body={"lora": shape}
            )
        assert refused.value.param == "lora"
    same = lineage.parent.model_extra["lora"]  # the parent's own shape, given in full, is no change
    job = lineage.client.fine_tuning.jobs.create(
        model=lineage.parent.fine_tuned_model, training_file=lineage.training_file, extra_body={"lora": same}
    )
    lineage.client.fine_tuning.jobs.cancel(job.id)


def test_the_parent_keeps_serving_and_deleting_it_leaves_the_child_serving(lineage: Lineage) -> None:
    client = lineage.client
    assert ask(client, lineage.parent.fine_tuned_model).startswith(PIRATE_PREFIX.strip())
    before = ask(client, lineage.child.fine_tuned_model)
    client.models.delete(lineage.parent.fine_tuned_model)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(lineage.parent.fine_tuned_model)
    assert ask(client, lineage.child.fine_tuned_model) == before
    card = client.models.retrieve(lineage.child.fine_tuned_model)
    assert (card.model_extra or {})["parent"] == lineage.parent.fine_tuned_model  # its history stays


# -- the gateway's side, in process on the fake engine (no training) ------------------------------------------
def finish_as_the_worker_does(data_dir: Path, job_id: str, name: str) -> None:
    """Mark the job succeeded with the top 10 layers trained, and register its model, as the worker does."""
    from adapters.lineage import Lineage as JobLineage
    from adapters.store import FineTuningJob
    from gateway.app import adapter_registry
    from gateway.bootstrap import open_database
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(data_dir=data_dir)
    database = open_database(settings)
    registry = adapter_registry(database, settings)
    adapter_dir = registry.job_dir(job_id) / "adapter"
    adapter_dir.mkdir(parents=True)
    with database.sessions.begin() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        job.status, job.fine_tuned_model, job.lora = "succeeded", name, {**job.lora, "layers": 10}
        lineage = JobLineage.of(job)
        registry.register(
            session,
            name=name,
            tenant_id=job.tenant_id,
            base_model=lineage.base_model,
            job_id=job_id,
            adapter_dir=adapter_dir,
            parent=lineage.parents[0] if lineage.continues else None,
        )
    database.dispose()


def test_continuing_through_the_gateway(in_process: Any, tmp_path: Path) -> None:
    gateway = in_process()
    _, tenant_name, client = gateway.tenant("heir")
    _, _, stranger = gateway.tenant("stranger")
    training_file = client.files.create(file=("p.jsonl", io.BytesIO(pirate_jsonl())), purpose="fine-tune").id
    first = client.fine_tuning.jobs.create(model="fake", training_file=training_file, suffix="first")
    assert first.model_extra["lineage"] == {"base_model": "fake", "parents": []}
    first_model = f"ft:fake:{tenant_name}:first:{first.id[6:14]}"
    finish_as_the_worker_does(tmp_path, first.id, first_model)

    second = client.fine_tuning.jobs.create(model=first_model, training_file=training_file, suffix="second")
    assert second.model == first_model
    assert second.model_extra["lineage"] == {"base_model": "fake", "parents": [first_model]}
    assert second.model_extra["lora"]["layers"] == 10  # the parent's shape
    second_model = f"ft:fake:{tenant_name}:second:{second.id[6:14]}"
    finish_as_the_worker_does(tmp_path, second.id, second_model)
    third = client.fine_tuning.jobs.create(model=second_model, training_file=training_file)
    assert third.model_extra["lineage"] == {"base_model": "fake", "parents": [second_model, first_model]}

    card = client.models.retrieve(second_model).model_extra or {}
    assert card == {"root": "fake", "parent": first_model, "fine_tuning_job_id": second.id}
    assert (client.models.retrieve(first_model).model_extra or {})["parent"] == "fake"
    base_card = client.models.retrieve("fake").model_extra or {}
    assert base_card == {"root": "fake"}  # what is None is left out

    stranger_file = stranger.files.create(file=("p.jsonl", io.BytesIO(pirate_jsonl())), purpose="fine-tune").id
    for model in (first_model, first_model.replace(first.id[6:14], "00000000")):
        with pytest.raises(openai.NotFoundError) as info:
            stranger.fine_tuning.jobs.create(model=model, training_file=stranger_file)
        assert info.value.code == "model_not_found"
    for shape in ({"rank": 8}, {"target_modules": ["q_proj"]}, {"layers": 3}, {"alpha": 8}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model=first_model, training_file=training_file, extra_body={"lora": shape})
        assert refused.value.param == "lora"
    same = {**first.model_extra["lora"], "layers": 10}
    client.fine_tuning.jobs.create(model=first_model, training_file=training_file, extra_body={"lora": same})
