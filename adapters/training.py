"""LoRA supervised fine-tuning on CPU (``peft`` + ``transformers``, a plain seeded PyTorch loop over a
``TrainableModel``, the rate falling linearly to 0, noise on the hidden state where the adapter starts): the loss
on the assistant / completion tokens only, a checkpoint at every epoch end, and with a validation set, each epoch's
validation loss, mean token accuracy and exact match of the answers the model generates greedily. The final
adapter is the best checkpoint by those (exact match, then token accuracy, then loss) unless the last is asked for;
in peft's format, which vLLM loads as a ``LoRARequest``.

The loop itself (``run_epochs``: shuffles, optimizer, schedule, checkpoints, the chosen adapter) is shared with
preference training (``adapters.preference``), which differs only in its batches' loss and its validation."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Self

import torch

from adapters.datasets import Dataset
from adapters.encoding import EncodedExample, encode_dataset
from adapters.hyperparameters import HIDDEN_NOISE
from adapters.trainable import LoraSpec, TrainableModel

__all__ = [
    "BatchResult",
    "Checkpoint",
    "LoraSpec",
    "Scores",
    "StepMetrics",
    "TrainingCancelled",
    "TrainingResult",
    "TrainingSpec",
    "Validation",
    "open_run",
    "run_epochs",
    "train_lora",
]


@dataclass(frozen=True)
class TrainingSpec:
    """One fine-tuning run. ``learning_rate`` is the rate itself (the worker multiplies its base rate)."""

    base_model_dir: Path
    train: Dataset
    validation: Dataset | None
    output_dir: Path
    n_epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 2e-3
    seed: int = 0
    lora: LoraSpec = field(default_factory=LoraSpec)
    max_seq_len: int = 1024
    keep: Literal["best", "last"] = "best"
    """With a validation set, the adapter is the best checkpoint ("best") or the last one."""
    threads: int | None = None
    """Torch threads for training (None: torch's default, every core)."""
    bf16: bool = False
    """Compute in bf16 (weights and optimizer in fp32): for CPUs with native bf16."""
    exact_match_examples: int = 64
    """Validation examples whose answers are generated for exact match, each epoch."""
    start_from: Path | None = None
    """A saved adapter of the same shape whose weights training starts from (continued training)."""
    noise: float = HIDDEN_NOISE
    """Supervised training's noise on the hidden state entering the lowest LoRA layer, relative to its norm
    (``adapters.hyperparameters.HIDDEN_NOISE``; 0: none). Preference training adds none."""


class Scores(Protocol):
    """How a checkpoint did on the validation set: what the events and checkpoints show of it, and how the best
    checkpoint is chosen."""

    @property
    def loss(self) -> float: ...

    def better_than(self, other: Self) -> bool: ...

    def data(self) -> dict[str, float]:
        """The metrics by their names in events' ``data`` and checkpoints' ``metrics``."""
        ...

    def text(self) -> str:
        """The metrics in words (the event messages)."""
        ...


@dataclass(frozen=True)
class Validation:
    """Supervised training's validation scores."""

    loss: float
    """Mean cross-entropy per trained token."""
    mean_token_accuracy: float
    """Share of trained tokens the model predicts (greedily) right, given the true prefix."""
    exact_match: float
    """Share of examples whose greedily generated first answer equals the reference (whitespace-stripped)."""

    def better_than(self, other: Validation) -> bool:
        return (self.exact_match, self.mean_token_accuracy, -self.loss) > (
            other.exact_match,
            other.mean_token_accuracy,
            -other.loss,
        )

    def data(self) -> dict[str, float]:
        return {
            "valid_loss": self.loss,
            "valid_mean_token_accuracy": self.mean_token_accuracy,
            "valid_exact_match": self.exact_match,
        }

    def text(self) -> str:
        return (
            f"validation loss={self.loss:.4f}, token accuracy={self.mean_token_accuracy:.3f}, "
            f"exact match={self.exact_match:.3f}"
        )


@dataclass(frozen=True)
class StepMetrics:
    """After one optimizer step (1-based); ``validation`` only on an epoch's last step, with a validation set."""

    step: int
    total_steps: int
    epoch: int
    train_loss: float
    train_mean_token_accuracy: float | None
    """Supervised training only."""
    validation: Scores | None
    trained_tokens: int = 0
    """Tokens trained on so far (what the job is charged if it ends now)."""

    @property
    def valid_loss(self) -> float | None:
        return self.validation.loss if self.validation else None


@dataclass(frozen=True)
class Checkpoint:
    """The adapter saved at an epoch end; ``train_loss`` is the epoch's mean loss per trained token."""

    step: int
    path: Path
    train_loss: float
    validation: Scores | None

    @property
    def valid_loss(self) -> float | None:
        return self.validation.loss if self.validation else None


@dataclass(frozen=True)
class TrainingResult:
    """``trained_tokens``: the training sequences' tokens times the epochs; the losses are the chosen checkpoint's."""

    adapter_dir: Path
    trained_tokens: int
    steps: int
    chosen: Checkpoint
    checkpoints: tuple[Checkpoint, ...]
    lora_layers: int
    """How many of the top decoder layers carry LoRA."""

    @property
    def train_loss(self) -> float:
        return self.chosen.train_loss

    @property
    def valid_loss(self) -> float | None:
        return self.chosen.valid_loss


class TrainingCancelled(Exception):
    """``should_stop()`` asked the run to stop; ``trained_tokens`` were trained until then."""

    def __init__(self, message: str, trained_tokens: int) -> None:
        super().__init__(message)
        self.trained_tokens = trained_tokens


def _ignore(_: Any) -> None:
    return None


def _never() -> bool:
    return False


@dataclass(frozen=True)
class BatchResult:
    """One optimizer step's batch, as a training method computed it."""

    objective: torch.Tensor | None
    """What the step minimises (differentiable); None when the batch has nothing to train."""
    loss: float
    """The batch's mean loss, as reported."""
    weight: int
    """What the batch's loss weighs in its epoch's mean (trained tokens, or pairs)."""
    tokens: int
    """Tokens trained (what the job is charged for)."""
    accuracy: float | None = None
    """Supervised training's token accuracy."""


def open_run(spec: TrainingSpec) -> tuple[Any, int]:
    """Check ``spec`` and set its threads: the base model's tokenizer and its padding id."""
    from transformers import AutoTokenizer

    if not spec.train.examples:
        raise ValueError("the training set has no examples")
    if spec.n_epochs < 1 or spec.batch_size < 1:
        raise ValueError("n_epochs and batch_size must be at least 1")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(spec.base_model_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return tokenizer, pad_id


def run_epochs(
    spec: TrainingSpec,
    model: TrainableModel,
    size: int,
    train_batch: Callable[[list[int]], BatchResult],
    validate: Callable[[], Scores] | None,
    *,
    on_metrics: Callable[[StepMetrics], None],
    on_checkpoint: Callable[[Checkpoint], None],
    should_stop: Callable[[], bool],
) -> TrainingResult:
    """The loop every training method shares: ``spec.n_epochs`` seeded shuffles of the ``size`` training items
    in batches, AdamW on the adapter with the rate falling linearly from ``spec.learning_rate`` to 0, ``validate``
    at each epoch's last step, a checkpoint per epoch, and the chosen one copied to ``spec.output_dir/adapter``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    total_steps = math.ceil(size / spec.batch_size) * spec.n_epochs
    # The rate falls linearly from spec.learning_rate towards 0 over the run: the last epochs settle.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 1 - done / total_steps)
    shuffler = torch.Generator().manual_seed(spec.seed)

    step = trained_tokens = 0
    checkpoints: list[Checkpoint] = []
    for epoch in range(1, spec.n_epochs + 1):
        model.train()
        order = torch.randperm(size, generator=shuffler).tolist()
        epoch_loss, epoch_weight = 0.0, 0
        for start in range(0, len(order), spec.batch_size):
            if should_stop():
                raise TrainingCancelled(f"cancelled before step {step + 1} of {total_steps}", trained_tokens)
            batch = train_batch(order[start : start + spec.batch_size])
            optimizer.zero_grad(set_to_none=True)
            if batch.objective is not None:
                torch.autograd.backward(batch.objective)
                optimizer.step()
            schedule.step()
            step += 1
            trained_tokens += batch.tokens
            epoch_loss += batch.loss * batch.weight
            epoch_weight += batch.weight
            last_of_epoch = start + spec.batch_size >= len(order)
            validation = validate() if last_of_epoch and validate else None
            on_metrics(
                StepMetrics(
                    step=step,
                    total_steps=total_steps,
                    epoch=epoch,
                    train_loss=batch.loss,
                    train_mean_token_accuracy=batch.accuracy,
                    validation=validation,
                    trained_tokens=trained_tokens,
                )
            )
        checkpoint = Checkpoint(
            step=step,
            path=spec.output_dir / "checkpoints" / f"step-{step}",
            train_loss=epoch_loss / max(epoch_weight, 1),
            validation=validation,
        )
        model.save(checkpoint.path)
        checkpoints.append(checkpoint)
        on_checkpoint(checkpoint)

    chosen = _choose(checkpoints, spec.keep)
    adapter_dir = spec.output_dir / "adapter"
    staging = spec.output_dir / ".adapter-staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(chosen.path, staging)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.rename(adapter_dir)
    return TrainingResult(adapter_dir, trained_tokens, step, chosen, tuple(checkpoints), model.lora_layers)


def train_lora(
    spec: TrainingSpec,
    *,
    on_metrics: Callable[[StepMetrics], None] = _ignore,
    on_checkpoint: Callable[[Checkpoint], None] = _ignore,
    should_stop: Callable[[], bool] = _never,
) -> TrainingResult:
    """Trains a LoRA adapter on ``spec.train`` and saves it in ``spec.output_dir/adapter``.

    Raises :class:`TrainingCancelled` as soon as ``should_stop()`` (asked before every step) returns True.
    """
    tokenizer, pad_id = open_run(spec)
    train = encode_dataset(tokenizer, spec.train, spec.max_seq_len)
    valid = encode_dataset(tokenizer, spec.validation, spec.max_seq_len) if spec.validation else []

    torch.manual_seed(spec.seed)
    model = TrainableModel(
        spec.base_model_dir, spec.lora, pad_id, bf16=spec.bf16, start_from=spec.start_from, noise=spec.noise
    )
    train_prefixes = model.prefixes(train)
    valid_prefixes = model.prefixes(valid) if valid else None

    def train_batch(indexes: list[int]) -> BatchResult:
        loss = model.loss([train[i] for i in indexes], [train_prefixes[i] for i in indexes] if train_prefixes else None)
        return BatchResult(
            objective=loss.summed / loss.tokens if loss.tokens else None,
            loss=float(loss.summed.detach()) / max(loss.tokens, 1),
            weight=loss.tokens,
            tokens=sum(len(train[i].input_ids) for i in indexes),
            accuracy=loss.correct / max(loss.tokens, 1),
        )

    def validation() -> Validation:
        return validate(model, tokenizer, valid, valid_prefixes, spec)

    return run_epochs(
        spec,
        model,
        len(train),
        train_batch,
        validation if valid else None,
        on_metrics=on_metrics,
        on_checkpoint=on_checkpoint,
        should_stop=should_stop,
    )


def _choose(checkpoints: list[Checkpoint], keep: str) -> Checkpoint:
    chosen = checkpoints[-1]
    if keep == "best":
        for checkpoint in checkpoints:
            if checkpoint.validation and chosen.validation and checkpoint.validation.better_than(chosen.validation):
                chosen = checkpoint
    return chosen


def validate(
    model: TrainableModel,
    tokenizer: Any,
    examples: Sequence[EncodedExample],
    prefixes: Sequence[torch.Tensor] | None,
    spec: TrainingSpec,
) -> Validation:
    """Loss and token accuracy over ``examples``, and exact match of the answers generated for the first
    ``spec.exact_match_examples`` of them (no gradients, dropout off)."""
    model.eval()
    total, tokens, correct = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(examples), spec.batch_size):
            batch_prefixes = prefixes[start : start + spec.batch_size] if prefixes else None
            loss = model.loss(examples[start : start + spec.batch_size], batch_prefixes)
            total, tokens, correct = total + float(loss.summed), tokens + loss.tokens, correct + loss.correct
    stop_ids = {tokenizer.eos_token_id}
    checked = [e for e in examples[: spec.exact_match_examples] if e.answer_start < len(e.input_ids)]
    matches = 0
    for start in range(0, len(checked), 16):
        chunk = checked[start : start + 16]
        references = [[t for t in e.first_answer() if t not in stop_ids] for e in chunk]
        answers = model.answers(
            [e.input_ids[: e.answer_start] for e in chunk], max(len(r) for r in references) + 16, stop_ids
        )
        for answer, reference in zip(answers, references, strict=True):
            matches += _text(tokenizer, answer) == _text(tokenizer, reference)
    model.train()
    return Validation(total / max(tokens, 1), correct / max(tokens, 1), matches / max(len(checked), 1))


def _text(tokenizer: Any, token_ids: Sequence[int]) -> str:
    return str(tokenizer.decode(list(token_ids), skip_special_tokens=True)).strip()
