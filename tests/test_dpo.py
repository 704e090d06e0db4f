"""DPO fine-tuning: the loss against a hand computation on a tiny random Llama (through the frozen-prefix split
and through the full model), ``TrainableModel.reference()`` against a fresh copy of the starting model,
preference files checked line by line, the request's ``method``, the auto hyperparameters, and the whole job
through the official ``openai`` client on the real gateway: events, checkpoints, metrics, billing, the ``ft:``
model answering in the preferred style."""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from adapters.datasets import DatasetError, PreferenceExample, parse_jsonl
from adapters.encoding import IGNORE_INDEX, EncodedExample, encode_example
from adapters.hyperparameters import DPO_BETA, choose
from adapters.preference import dpo_losses, dpo_objective, train_dpo
from adapters.trainable import LoraSpec, TrainableModel
from adapters.training import TrainingCancelled, TrainingSpec
from gateway.errors import InvalidRequestError
from gateway.fine_tuning.models import FineTuningJobCreate
from tests.support import MODEL
from tests.support.tenants import create_tenant, openai_client

QUESTIONS = [
    ("What is the capital of France?", "Paris", "The capital of France is Paris."),
    ("What colour is grass?", "Green", "Grass is usually green."),
    ("What is the opposite of hot?", "Cold", "The opposite of hot is cold."),
    ("How many legs does a spider have?", "Eight", "A spider has eight legs."),
    ("What is the capital of Japan?", "Tokyo", "The capital of Japan is Tokyo."),
    ("What colour is snow?", "White", "Snow is usually white."),
    ("What is the opposite of up?", "Down", "The opposite of up is down."),
    ("How many legs does a bird have?", "Two", "A bird has two legs."),
    ("What is the capital of Italy?", "Rome", "The capital of Italy is Rome."),
    ("What colour is the sky?", "Blue", "The sky is usually blue."),
    ("What is the opposite of big?", "Small", "The opposite of big is small."),
    ("How many legs does a dog have?", "Four", "A dog has four legs."),
]
VALIDATION = [
    ("What is the capital of Spain?", "Madrid", "The capital of Spain is Madrid."),
    ("What is the opposite of fast?", "Slow", "The opposite of fast is slow."),
]
HELD_OUT = ["What is the capital of Germany?", "What colour is coal?", "What is the opposite of early?"]


def pair_line(prompt: str, preferred: str, other: str, **extra: Any) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": prompt}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": other}],
        **extra,
    }


def jsonl(*lines: Any) -> bytes:
    return ("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n").encode()


def pairs_jsonl(rows: list[tuple[str, str, str]]) -> bytes:
    return jsonl(*(pair_line(prompt, f"{word}.", sentence) for prompt, word, sentence in rows))


# -- the loss and the reference model, on a tiny random Llama ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A random 3-layer Llama with SmolLM2's tokenizer: LoRA on the top layer, so the frozen prefix is used."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def trainable(directory: Path, pad_id: int) -> TrainableModel:
    model = TrainableModel(directory, LoraSpec(rank=4, alpha=8, layers=1), pad_id)
    with torch.no_grad():  # LoRA starts as the identity (B = 0): move it so the policy differs from the reference
        for name, param in model.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.eval()
    return model


def summed_logprob(logits: torch.Tensor, sequence: EncodedExample) -> float:
    """By hand: the sum over the answer's (trained) tokens of log softmax(logits at the position before it)[token]."""
    total = 0.0
    for position, label in enumerate(sequence.labels):
        if label != IGNORE_INDEX:
            row = logits[position - 1].double()
            total += float(row[label] - torch.logsumexp(row, 0))
    return total


def test_the_dpo_loss_is_the_hand_computed_one(tiny_model_dir: Path, hf_tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM

    examples = parse_jsonl(pairs_jsonl(QUESTIONS[:3])).examples
    sequences = [
        encode_example(hf_tokenizer, answer, 256)
        for e in examples
        if isinstance(e, PreferenceExample)
        for answer in e.pair()
    ]
    model = trainable(tiny_model_dir, hf_tokenizer.eos_token_id)
    assert model.split_at == 2  # the frozen-prefix path
    starting: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    beta = 0.3
    with torch.no_grad():
        policy_split = model.answer_logprobs(sequences, model.prefixes(sequences)).view(-1, 2)
        policy_full = model.answer_logprobs(sequences, None).view(-1, 2)
        with model.reference():
            reference = model.answer_logprobs(sequences, model.prefixes(sequences)).view(-1, 2)
        losses, margins = dpo_losses(policy_split, reference, beta)
        expected_losses, expected_margins = [], []
        hand: list[tuple[float, float]] = []  # (policy, reference) per sequence
        for sequence in sequences:
            ids = torch.tensor([sequence.input_ids])
            lora_logits = model.model(input_ids=ids).logits[0]
            base_logits = starting(input_ids=ids).logits[0]
            hand.append(
                (
                    summed_logprob(lora_logits, sequence),
                    summed_logprob(base_logits, sequence),
                )
            )
    for k in range(len(examples)):
        (pw, rw), (pl, rl) = hand[2 * k], hand[2 * k + 1]
        margin = beta * ((pw - rw) - (pl - rl))
        expected_margins.append(margin)
        expected_losses.append(-math.log(1 / (1 + math.exp(-margin))))
        assert policy_split[k].tolist() == pytest.approx([pw, pl], abs=1e-3)
        assert reference[k].tolist() == pytest.approx([rw, rl], abs=1e-3)
    assert policy_full.flatten().tolist() == pytest.approx(policy_split.flatten().tolist(), abs=1e-3)
    assert margins.tolist() == pytest.approx(expected_margins, abs=1e-3)
    assert losses.tolist() == pytest.approx(expected_losses, abs=1e-3)
    assert any(abs(m) > 0.01 for m in expected_margins)  # the policy really differs from the reference
    # The loss is differentiable in the adapter alone.
    losses, _ = dpo_losses(model.answer_logprobs(sequences, None).view(-1, 2), reference, beta)
    losses.mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads if g is not None)


def test_reference_gives_the_starting_models_logits(tiny_model_dir: Path, hf_tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM

    model = trainable(tiny_model_dir, hf_tokenizer.eos_token_id)
    starting: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    ids = torch.tensor([hf_tokenizer("Reference models are the starting model.").input_ids])
    with torch.no_grad():
        base = starting(input_ids=ids).logits
        with model.reference():
            inside = model.model(input_ids=ids).logits
        outside = model.model(input_ids=ids).logits
    assert torch.allclose(inside, base, atol=1e-5)
    assert not torch.allclose(outside, base, atol=1e-3)  # the adapter is on again after it


def test_a_cancel_in_the_reference_pass_stops_it_before_the_first_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    asked: list[int] = []

    def stop_on_the_third_chunk() -> bool:
        asked.append(1)
        return len(asked) >= 3

    rows = [(f"Question {i}?", "Yes", f"Here is a long answer to question {i}.") for i in range(40)]
    spec = TrainingSpec(
        base_model_dir=tiny_model_dir,
        train=parse_jsonl(pairs_jsonl(rows)),
        validation=None,
        output_dir=tmp_path / "run",
        lora=LoraSpec(rank=4, alpha=8, layers=1),
    )
    with pytest.raises(TrainingCancelled) as stopped:
        train_dpo(spec, beta=0.1, should_stop=stop_on_the_third_chunk)
    assert stopped.value.trained_tokens == 0
    assert len(asked) == 3  # 80 answers are 5 chunks: it stopped at the third, not after all of them


def test_the_objective_adds_the_preferred_answers_per_token_nll() -> None:
    losses = torch.tensor([0.5, 0.25], requires_grad=True)
    preferred = torch.tensor([-6.0, -20.0], requires_grad=True)  # summed log-probabilities of 3 and 10 tokens
    objective, reported = dpo_objective(losses, preferred, torch.tensor([3.0, 10.0]), nll_weight=0.5)
    assert reported == pytest.approx(0.375)  # DPO's loss alone
    assert float(objective.detach()) == pytest.approx(0.375 + 0.5 * (2.0 + 2.0) / 2)
    objective.backward()
    assert preferred.grad is not None
    assert preferred.grad.tolist() == pytest.approx([-0.5 / 2 / 3, -0.5 / 2 / 10])  # it pulls them up, per token
    alone, _ = dpo_objective(losses, preferred, torch.tensor([3.0, 10.0]), nll_weight=0.0)
    assert float(alone.detach()) == pytest.approx(0.375)


# -- preference files ---------------------------------------------------------------------------------------------

GOOD = pair_line("Hi?", "Hello.", "Hello there, how can I help you today?")


def test_preference_files_parse() -> None:
    data = jsonl(
        GOOD,
        "",
        {
            **GOOD,
            "input": {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Again?"},
                ],
                "parallel_tool_calls": False,
            },
        },
    )
    dataset = parse_jsonl(data)
    assert dataset.format == "preference"
    second = dataset.examples[1]
    assert isinstance(second, PreferenceExample)
    preferred, other = second.pair()
    # Earlier assistant turns are context: only the answer at the end is trained.
    assert [m.weight for m in preferred.messages] == [1, 1, 0, 1, 1]
    assert preferred.messages[-1].content == "Hello." and other.messages[-1].content.startswith("Hello there")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({k: v for k, v in GOOD.items() if k != "non_preferred_output"}, "missing the key 'non_preferred_output'"),
        ({**GOOD, "extra": 1}, "unknown key 'extra'"),
        ({**GOOD, "input": []}, "input must be an object"),
        ({**GOOD, "input": {"messages": []}}, "input.messages must not be empty"),
        ({**GOOD, "input": {"messages": [{"role": "user", "content": "x", "weight": 1}]}}, "unknown key 'weight'"),
        (
            {**GOOD, "input": {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}},
            "must end with a user message",
        ),
        ({**GOOD, "input": {"messages": [{"role": "user", "content": "x"}], "tools": []}}, "input.tools"),
        ({**GOOD, "input": {"messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": 1}}, "boolean"),
        ({**GOOD, "preferred_output": []}, "preferred_output must be a list of exactly one assistant message"),
        ({**GOOD, "preferred_output": [{"role": "assistant", "content": "a"}] * 2}, "exactly one"),
        (
            {**GOOD, "preferred_output": [{"role": "user", "content": "a"}]},
            "preferred_output[0].role must be assistant",
        ),
        ({**GOOD, "non_preferred_output": [{"role": "assistant", "content": " "}]}, "content must not be empty"),
        ({**GOOD, "non_preferred_output": GOOD["preferred_output"]}, "must differ"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "preference"),
    ],
)
def test_bad_preference_lines_are_named(line: dict[str, Any], reason: str) -> None:
    with pytest.raises(DatasetError) as info:
        parse_jsonl(jsonl(GOOD, GOOD, "", line))
    assert info.value.line == 4
    assert reason in info.value.reason


# -- the request's method and the auto hyperparameters ------------------------------------------------------------


def body(**fields: Any) -> FineTuningJobCreate:
    return FineTuningJobCreate.model_validate({"model": MODEL, "training_file": "file-x", **fields})


def test_method_dpo_and_its_hyperparameters() -> None:
    dpo = body(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2}}})
    assert dpo.method_type == "dpo"
    asked = dpo.requested_hyperparameters()
    assert asked == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": 0.25}
    assert body(method={"type": "dpo"}).requested_hyperparameters()["beta"] == "auto"
    # The older top-level form still works for supervised, and agrees with method when both are given.
    assert body(hyperparameters={"n_epochs": 2}).requested_hyperparameters()["n_epochs"] == 2
    both = body(hyperparameters={"n_epochs": 2}, method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2}}})
    assert both.requested_hyperparameters()["n_epochs"] == 2
    refused = [
        body(hyperparameters={"n_epochs": 3}, method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2}}}),
        body(method={"type": "dpo", "supervised": {}}),
        body(method={"type": "supervised", "dpo": {}}),
    ]
    for request in refused:
        with pytest.raises(InvalidRequestError):
            request.requested_hyperparameters()


def test_auto_hyperparameters_for_dpo() -> None:
    auto = choose(200, {}, "dpo")
    assert auto.beta == DPO_BETA and auto.batch_size == 8 and auto.n_epochs >= 1
    assert "beta" in auto.as_dict() and "beta" not in choose(200, {}).as_dict()
    given = choose(200, {"beta": 0.5, "n_epochs": 4, "batch_size": 2, "learning_rate_multiplier": 3.0}, "dpo")
    assert (given.beta, given.n_epochs, given.batch_size, given.learning_rate_multiplier) == (0.5, 4, 2, 3.0)
    assert choose(3, {}, "dpo").batch_size == 1


# -- end to end through the official client -------------------------------------------------------------------------

TRAINING_TIMEOUT_S = 300
DPO_HYPERPARAMETERS = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 5, "beta": 0.2}


@dataclass
class Trained:
    client: openai.OpenAI
    tenant: dict[str, Any]
    job: Any
    training_file: str


def upload(client: openai.OpenAI, data: bytes) -> str:
    return client.files.create(file=("data.jsonl", io.BytesIO(data)), purpose="fine-tune").id  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(server: str, admin: httpx.Client) -> Trained:
    tenant, key = create_tenant(admin, "dpo-tuner", model_prices={MODEL: {"input": "1", "output": "2"}})
    client = openai_client(server, key)
    training_file = upload(client, pairs_jsonl(QUESTIONS))
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=training_file,
        validation_file=upload(client, pairs_jsonl(VALIDATION)),
        suffix="brief",
        seed=0,
        method={"type": "dpo", "dpo": {"hyperparameters": DPO_HYPERPARAMETERS}},
    )
    assert job.method is not None and job.method.type == "dpo"
    deadline = time.monotonic() + TRAINING_TIMEOUT_S
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job.id} still {job.status}"
        time.sleep(0.5)
    assert job.status == "succeeded", job.error
    return Trained(client, tenant, job, training_file)


def test_the_dpo_job_object(trained: Trained) -> None:
    job = trained.job
    assert job.method.type == "dpo"
    assert job.method.dpo is not None
    assert job.method.dpo.hyperparameters.model_dump(exclude_none=True) == DPO_HYPERPARAMETERS
    assert job.hyperparameters.n_epochs == 3  # the older top-level shape, as before
    assert job.fine_tuned_model.startswith(f"ft:{MODEL}:{trained.tenant['name']}:brief:")


def test_dpo_events_and_checkpoints_carry_the_preference_metrics(trained: Trained) -> None:
    events = list(trained.client.fine_tuning.jobs.list_events(trained.job.id, limit=100))
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 9  # 12 pairs / batch 4 x 3 epochs
    assert all(e.data["train_loss"] > 0 for e in metrics)
    first = min(metrics, key=lambda e: e.data["step"])
    assert first.data["train_loss"] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as the reference
    epoch_ends = sorted((e for e in metrics if "reward_accuracy" in e.data), key=lambda e: e.data["step"])
    assert len(epoch_ends) == 3
    assert epoch_ends[-1].data["reward_margin"] > 0
    assert epoch_ends[-1].data["reward_accuracy"] == 1  # both validation pairs
    assert epoch_ends[-1].data["valid_loss"] < math.log(2)
    checkpoints = trained.client.fine_tuning.jobs.checkpoints.list(trained.job.id).data
    assert [c.step_number for c in checkpoints] == [9, 6, 3]
    for checkpoint in checkpoints:
        assert {"train_loss", "valid_loss", "reward_margin", "reward_accuracy"} <= set(checkpoint.metrics.model_dump())


def test_dpo_bills_the_prompt_and_both_answers_of_each_pair_each_epoch(trained: Trained, hf_tokenizer: Any) -> None:
    per_epoch = 0
    for example in parse_jsonl(pairs_jsonl(QUESTIONS)).examples:
        assert isinstance(example, PreferenceExample)
        preferred, other = (encode_example(hf_tokenizer, answer, 1024) for answer in example.pair())
        per_epoch += len(preferred.input_ids) + len(other.input_ids) - other.answer_start
    assert trained.job.trained_tokens == per_epoch * DPO_HYPERPARAMETERS["n_epochs"]


def test_the_dpo_model_answers_in_the_preferred_style(trained: Trained) -> None:
    def words(model: str, question: str) -> int:
        reply = trained.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=32, temperature=0
        )
        return len((reply.choices[0].message.content or "").split())

    tuned = [words(trained.job.fine_tuned_model, q) for q in HELD_OUT]
    base = [words(MODEL, q) for q in HELD_OUT]
    assert sum(tuned) < sum(base)


def test_files_of_the_wrong_kind_are_refused_at_creation(trained: Trained) -> None:
    chat = upload(
        trained.client,
        jsonl({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
    )
    cases = [
        ({"training_file": chat, "method": {"type": "dpo"}}, "training_file"),
        ({"training_file": trained.training_file}, "training_file"),  # supervised on pairs
        (
            {"training_file": trained.training_file, "validation_file": chat, "method": {"type": "dpo"}},
            "validation_file",
        ),
        ({"training_file": trained.training_file, "method": {"type": "reinforcement"}}, "method.type"),
        (
            {
                "training_file": trained.training_file,
                "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}},
            },
            "method.dpo.hyperparameters.beta",
        ),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            trained.client.post("/fine_tuning/jobs", body={"model": MODEL, **fields}, cast_to=object)
        if param:
            assert info.value.body["param"] == param, fields
        if param in ("training_file", "validation_file"):
            assert info.value.code == "invalid_file_format"
