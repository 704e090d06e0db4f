"""LoRA fine-tuning on the real model (CPU): loss masking, a tiny run that learns a distinctive reply,
determinism, checkpoints, cancellation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters.datasets import ChatExample, Message, PromptCompletionExample, parse_jsonl
from adapters.encoding import IGNORE_INDEX, EncodedExample, encode_dataset, encode_example
from adapters.trainable import LoraSpec, TrainableModel
from adapters.training import (
    Checkpoint,
    StepMetrics,
    TrainingCancelled,
    TrainingResult,
    TrainingSpec,
    Validation,
    train_lora,
)
from tests.finetune_data import HELD_OUT_PROMPTS, PIRATE_PREFIX, QA, VALIDATION_QA, pirate_jsonl

EPOCHS = 3
LEARNING_RATE = 2e-3


def trained_runs(encoded: EncodedExample) -> list[list[int]]:
    """The token ids of each contiguous run of trained (not -100) labels."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in encoded.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def test_chat_loss_only_on_assistant_messages_and_their_end_of_turn(hf_tokenizer: Any) -> None:
    example = ChatExample(
        messages=(
            Message("system", "You are a pirate."),
            Message("user", "Hi"),
            Message("assistant", "Arr, matey! Ahoy."),
            Message("user", "Skip this one"),
            Message("assistant", "Not trained on.", weight=0),
            Message("user", "Where is the treasure?"),
            Message("assistant", "Arr, matey! Buried on the island."),
        )
    )
    encoded = encode_example(hf_tokenizer, example, max_seq_len=1024)
    assert len(encoded.input_ids) == len(encoded.labels)
    rendered = hf_tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in example.messages], tokenize=False
    )
    assert hf_tokenizer.decode(encoded.input_ids) == rendered
    runs = [hf_tokenizer.decode(run) for run in trained_runs(encoded)]
    assert runs == ["Arr, matey! Ahoy.<|im_end|>", "Arr, matey! Buried on the island.<|im_end|>"]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(encoded.input_ids, encoded.labels, strict=True))


def test_chat_generation_prompt_is_context(hf_tokenizer: Any) -> None:
    """What the model sees before an assistant message is exactly the prompt vLLM renders for generation."""
    example = ChatExample(messages=(Message("user", "Hi"), Message("assistant", "Arr!")))
    encoded = encode_example(hf_tokenizer, example, max_seq_len=1024)
    prompt_ids = hf_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_dict=False
    )
    assert list(encoded.input_ids[: len(prompt_ids)]) == prompt_ids
    assert set(encoded.labels[: len(prompt_ids)]) == {IGNORE_INDEX}
    assert hf_tokenizer.decode(encoded.labels[len(prompt_ids) :][:-1]) == "Arr!<|im_end|>"


def test_chat_opening_with_the_assistant(hf_tokenizer: Any) -> None:
    encoded = encode_example(hf_tokenizer, ChatExample(messages=(Message("assistant", "Ahoy!"),)), max_seq_len=1024)
    assert [hf_tokenizer.decode(run) for run in trained_runs(encoded)] == ["Ahoy!<|im_end|>"]


def test_prompt_completion_loss_only_on_completion_and_eos(hf_tokenizer: Any) -> None:
    example = PromptCompletionExample(prompt="The capital of France is", completion=" Paris.")
    encoded = encode_example(hf_tokenizer, example, max_seq_len=1024)
    assert hf_tokenizer.decode(encoded.input_ids) == "The capital of France is Paris.<|im_end|>"
    assert [hf_tokenizer.decode(run) for run in trained_runs(encoded)] == [" Paris.<|im_end|>"]
    assert encoded.labels[-1] == hf_tokenizer.eos_token_id


def test_truncation(hf_tokenizer: Any) -> None:
    dataset = parse_jsonl(pirate_jsonl())
    encoded = encode_dataset(hf_tokenizer, dataset, max_seq_len=12)
    assert all(len(e.input_ids) == len(e.labels) == 12 for e in encoded)


@dataclass
class Run:
    spec: TrainingSpec
    result: TrainingResult
    metrics: list[StepMetrics] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)


def pirate_spec(model_dir: Path, output_dir: Path, n_epochs: int = EPOCHS) -> TrainingSpec:
    return TrainingSpec(
        base_model_dir=model_dir,
        train=parse_jsonl(pirate_jsonl()),
        validation=parse_jsonl(pirate_jsonl(VALIDATION_QA)),
        output_dir=output_dir,
        n_epochs=n_epochs,
        batch_size=4,
        learning_rate=LEARNING_RATE,
        seed=0,
    )


def run_training(spec: TrainingSpec) -> Run:
    metrics: list[StepMetrics] = []
    checkpoints: list[Checkpoint] = []
    result = train_lora(spec, on_metrics=metrics.append, on_checkpoint=checkpoints.append)
    return Run(spec, result, metrics, checkpoints)


@pytest.fixture(scope="module")
def pirate_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_training(pirate_spec(model_dir, tmp_path_factory.mktemp("pirate-run")))


def test_run_reports_steps_checkpoints_and_tokens(pirate_run: Run, hf_tokenizer: Any) -> None:
    result, metrics, checkpoints = pirate_run.result, pirate_run.metrics, pirate_run.checkpoints
    assert result.steps == 9
    assert [m.step for m in metrics] == list(range(1, 10))
    assert {m.total_steps for m in metrics} == {9}
    assert [m.epoch for m in metrics] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [m.valid_loss is not None for m in metrics] == [False, False, True] * 3

    output_dir = pirate_run.spec.output_dir
    assert [c.step for c in checkpoints] == [3, 6, 9]
    for checkpoint in checkpoints:
        assert checkpoint.path == output_dir / "checkpoints" / f"step-{checkpoint.step}"
        assert (checkpoint.path / "adapter_config.json").is_file()
        assert (checkpoint.path / "adapter_model.safetensors").is_file()
        assert checkpoint.valid_loss == metrics[checkpoint.step - 1].valid_loss
    assert result.adapter_dir == output_dir / "adapter"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"]) == (16, 32)
    assert sorted(config["target_modules"]) == sorted(LoraSpec().target_modules)
    assert config["layers_to_transform"] == list(range(20, 30))  # the top third of SmolLM2-135M's 30 layers
    assert result.lora_layers == 10
    for metric in metrics:
        assert 0 <= metric.train_mean_token_accuracy <= 1
    for checkpoint in checkpoints:
        assert checkpoint.validation is not None
        assert 0 <= checkpoint.validation.mean_token_accuracy <= 1
        assert checkpoint.validation.exact_match in (0, 0.5, 1)  # two validation examples

    encoded = encode_dataset(hf_tokenizer, pirate_run.spec.train, pirate_run.spec.max_seq_len)
    assert result.trained_tokens == sum(len(e.input_ids) for e in encoded) * EPOCHS


def test_losses_decrease(pirate_run: Run) -> None:
    train_losses = [c.train_loss for c in pirate_run.checkpoints]
    valid_losses = [c.valid_loss for c in pirate_run.checkpoints]
    assert train_losses == sorted(train_losses, reverse=True)
    assert train_losses[-1] < train_losses[0] / 3
    assert valid_losses == sorted(valid_losses, reverse=True)  # type: ignore[type-var]
    chosen = pirate_run.result.chosen
    assert chosen in pirate_run.checkpoints
    assert (pirate_run.result.train_loss, pirate_run.result.valid_loss) == (chosen.train_loss, chosen.valid_loss)
    best = max(
        pirate_run.checkpoints,
        key=lambda c: (c.validation.exact_match, c.validation.mean_token_accuracy, -c.validation.loss),  # type: ignore[union-attr]
    )
    assert chosen.validation == best.validation


def test_same_seed_same_run(pirate_run: Run, model_dir: Path, tmp_path: Path) -> None:
    """A rerun with the same seed, stopped after its first epoch, repeats that epoch exactly (the same rate
    schedule, as it plans the same run): losses and adapter weights."""
    from safetensors.torch import load_file

    metrics: list[StepMetrics] = []
    checkpoints: list[Checkpoint] = []
    with pytest.raises(TrainingCancelled):
        train_lora(
            pirate_spec(model_dir, tmp_path),
            on_metrics=metrics.append,
            on_checkpoint=checkpoints.append,
            should_stop=lambda: len(checkpoints) == 1,
        )
    assert [(m.train_loss, m.valid_loss) for m in metrics] == [
        (m.train_loss, m.valid_loss) for m in pirate_run.metrics[:3]
    ]
    first = load_file(pirate_run.checkpoints[0].path / "adapter_model.safetensors")
    second = load_file(checkpoints[0].path / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_adapter_learned_the_reply_style(pirate_run: Run, model_dir: Path, hf_tokenizer: Any) -> None:
    """Greedy replies to questions not in the training set open with the trained words; the base model's don't."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(pirate_run.result.adapter_dir))

    def reply(question: str) -> str:
        inputs = hf_tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
        )
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        return str(hf_tokenizer.decode(output[0, inputs["input_ids"].shape[1] :]))

    for question in HELD_OUT_PROMPTS:
        assert reply(question).startswith(PIRATE_PREFIX.strip()), (question, reply(question))
    with model.disable_adapter():
        assert not reply(HELD_OUT_PROMPTS[0]).startswith("Arr")


def test_should_stop_cancels(model_dir: Path, tmp_path: Path) -> None:
    """Asked before every step; also runs a step on prompt/completion examples."""
    completions = b"".join(
        json.dumps({"prompt": question, "completion": " " + answer}).encode() + b"\n" for question, answer in QA
    )
    spec = replace(pirate_spec(model_dir, tmp_path), train=parse_jsonl(completions), validation=None)
    metrics: list[StepMetrics] = []
    asked = 0

    def should_stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > 1

    with pytest.raises(TrainingCancelled):
        train_lora(spec, on_metrics=metrics.append, should_stop=should_stop)
    assert [(m.step, m.total_steps) for m in metrics] == [(1, 9)]
    assert metrics[0].train_loss > 0
    assert not (tmp_path / "adapter").exists()
    assert not (tmp_path / "checkpoints").exists()


def test_the_frozen_prefix_gives_the_full_models_loss(model_dir: Path, hf_tokenizer: Any) -> None:
    """Training the top layers from cached hidden states is the same arithmetic as the full model."""
    examples = encode_dataset(hf_tokenizer, parse_jsonl(pirate_jsonl()), 1024)[:4]
    split = TrainableModel(model_dir, LoraSpec(layers=10), hf_tokenizer.eos_token_id)
    assert split.split_at == 20
    for param in split.parameters():  # any adapter at all, not the zero one it starts as
        torch.nn.init.normal_(param, std=0.02)
    with torch.no_grad():
        through_prefix = split.loss(examples, split.prefixes(examples))
        through_all = split.loss(examples, None)
    assert through_prefix.tokens == through_all.tokens
    assert abs(float(through_prefix.summed) - float(through_all.summed)) < 1e-3 * float(through_all.summed)
    assert through_prefix.correct == through_all.correct


def test_hidden_noise_is_seeded_and_only_in_training_steps(model_dir: Path, hf_tokenizer: Any) -> None:
    """The noise moves a training step's loss, the same way for the same seed, through the cached prefix and the
    full model alike; validation (no gradients) and eval mode see the model without it."""
    examples = encode_dataset(hf_tokenizer, parse_jsonl(pirate_jsonl()), 1024)[:4]
    quiet = TrainableModel(model_dir, LoraSpec(layers=10), hf_tokenizer.eos_token_id)
    noisy = TrainableModel(model_dir, LoraSpec(layers=10), hf_tokenizer.eos_token_id, noise=0.15)
    prefixes = noisy.prefixes(examples)
    noisy.train()
    quiet.train()

    def step_loss(model: TrainableModel, cached: list[torch.Tensor] | None, seed: int = 0) -> float:
        torch.manual_seed(seed)
        return float(model.loss(examples, cached).summed.detach())

    for cached in (prefixes, None):
        assert step_loss(noisy, cached) == step_loss(noisy, cached)
        assert step_loss(noisy, cached) != step_loss(noisy, cached, seed=1)
        assert abs(step_loss(noisy, cached) - step_loss(quiet, cached)) > 1e-3 * step_loss(quiet, cached)
        with torch.no_grad():
            assert step_loss(noisy, cached) == step_loss(quiet, cached)
        noisy.eval()
        quiet.eval()
        assert step_loss(noisy, cached) == step_loss(quiet, cached)
        noisy.train()
        quiet.train()


def test_the_best_checkpoint_is_kept_unless_the_last_is_asked_for() -> None:
    from adapters.training import _choose

    def checkpoint(step: int, exact: float, accuracy: float, loss: float) -> Checkpoint:
        return Checkpoint(step, Path(f"step-{step}"), 0.1, Validation(loss, accuracy, exact))

    checkpoints = [checkpoint(1, 0.5, 0.9, 0.3), checkpoint(2, 0.8, 0.8, 0.4), checkpoint(3, 0.8, 0.85, 0.2)]
    assert _choose(checkpoints, "best").step == 3
    assert _choose(checkpoints[:2], "best").step == 2
    assert _choose([checkpoint(1, 0.9, 0.9, 0.3), checkpoint(2, 0.5, 0.9, 0.1)], "best").step == 1
    assert _choose([checkpoint(1, 0.9, 0.9, 0.3), checkpoint(2, 0.5, 0.9, 0.1)], "last").step == 2
