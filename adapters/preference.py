"""Preference fine-tuning: DPO (Rafailov et al., 2023) of a LoRA adapter on pairs of answers, the better one
first, through the same loop as supervised training (``adapters.training.run_epochs``).

Each pair is a prompt x and two answers y_w (preferred) and y_l (not). With log π(y|x) the summed log-probability
of an answer's tokens (its end-of-turn token included) under the model being trained, π_θ, and under the job's
starting model, π_ref, a pair's loss is

    -log sigmoid(β · [(log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x))])

and a batch's is the mean over its pairs, plus ``nll_weight`` times the preferred answers' mean per-token negative
log-likelihood under π_θ (as RPO, Pang et al. 2024, and TRL's ``rpo_alpha``): DPO alone may win its margin by
making the other answer unlikely without making the preferred one likely, so a style a base model never writes is
not learnt (measured: bullets, ``adapters/hyperparameters.py``). The bracket times β is the pair's *reward margin*:
how much more the training raised the preferred answer than the other. π_ref is fixed, so its log-probabilities are
computed once, before the first step, on the same weights (``TrainableModel.reference()``) and with the same
frozen prefixes.

With validation pairs, each epoch reports their mean loss (``valid_loss``), mean reward margin
(``reward_margin``) and the share of pairs whose margin is positive (``reward_accuracy``); the kept checkpoint is
the best by reward accuracy, then loss. A job is charged for the prompt and both answers of each pair, each epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapters.datasets import Dataset, PreferenceExample
from adapters.encoding import EncodedExample, encode_example
from adapters.trainable import TrainableModel
from adapters.training import (
    BatchResult,
    Checkpoint,
    StepMetrics,
    TrainingCancelled,
    TrainingResult,
    TrainingSpec,
    open_run,
    run_epochs,
)

__all__ = ["PREFERRED_NLL_WEIGHT", "PreferenceValidation", "dpo_losses", "dpo_objective", "train_dpo"]

_CHUNK = 16
"""Sequences per forward pass where no gradient is taken (reference and validation log-probabilities)."""
PREFERRED_NLL_WEIGHT = 1.0
"""The weight of the preferred answers' per-token NLL in every DPO job's objective (RPO's alpha 1): measured in
``adapters/hyperparameters.py``, without it a bullet-list preference was not learnt at all."""


@dataclass(frozen=True)
class PreferenceValidation:
    loss: float
    """Mean DPO loss over the validation pairs."""
    reward_margin: float
    """Mean β-scaled reward margin (preferred minus non-preferred)."""
    reward_accuracy: float
    """Share of validation pairs whose reward margin is positive."""

    def better_than(self, other: PreferenceValidation) -> bool:
        return (self.reward_accuracy, -self.loss) > (other.reward_accuracy, -other.loss)

    def data(self) -> dict[str, float]:
        return {"valid_loss": self.loss, "reward_margin": self.reward_margin, "reward_accuracy": self.reward_accuracy}

    def text(self) -> str:
        return (
            f"validation loss={self.loss:.4f}, reward margin={self.reward_margin:.3f}, "
            f"reward accuracy={self.reward_accuracy:.3f}"
        )


def dpo_losses(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's DPO loss and reward margin. ``policy`` and ``reference`` hold the answers' summed
    log-probabilities as (pairs, 2): the preferred answer's in column 0, the other's in column 1."""
    gained = policy - reference
    margins = beta * (gained[:, 0] - gained[:, 1])
    return -torch.nn.functional.logsigmoid(margins), margins


def dpo_objective(
    losses: torch.Tensor, preferred: torch.Tensor, preferred_tokens: torch.Tensor, nll_weight: float
) -> tuple[torch.Tensor, float]:
    """What a batch's step minimises, and the loss it reports (DPO's alone, comparable with ``valid_loss``): the
    mean of the pairs' ``losses`` plus ``nll_weight`` times the mean over pairs of the preferred answers' negative
    log-probability (``preferred``, summed) per token (``preferred_tokens``)."""
    loss = losses.mean()
    nll = -(preferred / preferred_tokens).mean()
    return loss + nll_weight * nll, float(loss.detach())


@dataclass(frozen=True)
class _Pairs:
    """Encoded pairs: sequence 2k is pair k's prompt + preferred answer, 2k + 1 its prompt + the other one."""

    sequences: list[EncodedExample]
    prefixes: list[torch.Tensor] | None
    reference: torch.Tensor
    """(pairs, 2): the starting model's log-probabilities of each pair's answers."""

    def __len__(self) -> int:
        return len(self.reference)

    def batch(self, indexes: Sequence[int]) -> tuple[list[EncodedExample], list[torch.Tensor] | None]:
        rows = [row for i in indexes for row in (2 * i, 2 * i + 1)]
        prefixes = [self.prefixes[row] for row in rows] if self.prefixes else None
        return [self.sequences[row] for row in rows], prefixes

    def preferred_tokens(self, indexes: Sequence[int]) -> torch.Tensor:
        """How many trained tokens each pair's preferred answer has (its end-of-turn token included)."""
        return torch.tensor([self.sequences[2 * i].trained_tokens for i in indexes], dtype=torch.float32)

    def tokens(self, indexes: Sequence[int]) -> int:
        """A pair's prompt once and both its answers (what it is charged for)."""
        total = 0
        for i in indexes:
            preferred, other = self.sequences[2 * i], self.sequences[2 * i + 1]
            total += len(preferred.input_ids) + len(other.input_ids) - other.answer_start
        return total


def _logprobs(
    model: TrainableModel,
    sequences: list[EncodedExample],
    prefixes: list[torch.Tensor] | None,
    should_stop: Callable[[], bool] = lambda: False,
) -> torch.Tensor:
    """(pairs, 2) log-probabilities of the answers, without gradients, a chunk at a time (``TrainingCancelled``
    as soon as ``should_stop()``, asked before every chunk: a large file's reference pass takes minutes)."""
    values = []
    with torch.no_grad():
        for start in range(0, len(sequences), _CHUNK):
            if should_stop():
                raise TrainingCancelled("cancelled before the first step", trained_tokens=0)
            chunk_prefixes = prefixes[start : start + _CHUNK] if prefixes else None
            values.append(model.answer_logprobs(sequences[start : start + _CHUNK], chunk_prefixes))
    return torch.cat(values).view(-1, 2)


def _encode(
    tokenizer: Any, model: TrainableModel, dataset: Dataset, max_seq_len: int, should_stop: Callable[[], bool]
) -> _Pairs:
    sequences = []
    for example in dataset.examples:
        if not isinstance(example, PreferenceExample):
            raise ValueError("preference training needs preference examples")
        sequences += [encode_example(tokenizer, answer, max_seq_len) for answer in example.pair()]
    prefixes = model.prefixes(sequences)
    model.eval()
    with model.reference():
        reference = _logprobs(model, sequences, prefixes, should_stop)
    return _Pairs(sequences, prefixes, reference)


def train_dpo(
    spec: TrainingSpec,
    beta: float,
    *,
    nll_weight: float = PREFERRED_NLL_WEIGHT,
    on_metrics: Callable[[StepMetrics], None] = lambda _: None,
    on_checkpoint: Callable[[Checkpoint], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TrainingResult:
    """Trains a LoRA adapter on the preference pairs of ``spec.train`` by DPO with ``beta`` (plus ``nll_weight``
    times the preferred answers' per-token negative log-likelihood) and saves it in
    ``spec.output_dir/adapter`` (``TrainingCancelled`` as soon as ``should_stop()``, asked before every step)."""
    tokenizer, pad_id = open_run(spec)
    torch.manual_seed(spec.seed)
    model = TrainableModel(spec.base_model_dir, spec.lora, pad_id, bf16=spec.bf16, start_from=spec.start_from)
    train = _encode(tokenizer, model, spec.train, spec.max_seq_len, should_stop)
    valid = _encode(tokenizer, model, spec.validation, spec.max_seq_len, should_stop) if spec.validation else None

    def train_batch(indexes: list[int]) -> BatchResult:
        sequences, prefixes = train.batch(indexes)
        policy = model.answer_logprobs(sequences, prefixes).view(-1, 2)
        losses, _ = dpo_losses(policy, train.reference[indexes], beta)
        objective, loss = dpo_objective(losses, policy[:, 0], train.preferred_tokens(indexes), nll_weight)
        return BatchResult(objective, loss, len(indexes), train.tokens(indexes))

    def validation() -> PreferenceValidation:
        assert valid is not None
        model.eval()
        losses, margins = dpo_losses(_logprobs(model, valid.sequences, valid.prefixes), valid.reference, beta)
        model.train()
        return PreferenceValidation(float(losses.mean()), float(margins.mean()), float((margins > 0).float().mean()))

    return run_epochs(
        spec,
        model,
        len(train),
        train_batch,
        validation if valid is not None else None,
        on_metrics=on_metrics,
        on_checkpoint=on_checkpoint,
        should_stop=should_stop,
    )
