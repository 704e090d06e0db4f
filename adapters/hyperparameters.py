"""The hyperparameters of a job, with every ``"auto"`` chosen from its data (as OpenAI chooses its auto epochs):
the defaults a user who knows nothing about LoRA gets, found by measurement across several tasks
(``bench/fine_tuning_quality.py``) rather than tuned to one.

OpenAI's ``learning_rate_multiplier`` multiplies ``BASE_LEARNING_RATE``; the LoRA adapter's shape (our extension)
defaults to rank 16 on every linear projection of the top third of the decoder layers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

BASE_LEARNING_RATE = 2e-4
"""What ``learning_rate_multiplier`` 1 means."""
EXAMPLE_PASSES = 600
"""Auto epochs aim at about this many examples seen in all (150 examples: 4 epochs), within 2 to 10 epochs."""
MAX_BATCH = 8
SUPERVISED_MULTIPLIER = 8.0
"""Supervised auto ``learning_rate_multiplier`` at the full batch of 8: a peak rate of 1.6e-3. Measured in process
(``bench/sft_sweep.py``, the held-out exact match of the three ``bench/ft_tasks.py`` tasks on seeds 0, 1 and 2, 4
epochs, rank 16 on the top 10 layers; Intel Xeon with AMX, 2 cores, bf16 training):

| multiplier | intent | extract | contact | worst |
|---|---|---|---|---|
| 15 (before) | 88 / 97 / 88 % | 95 / 98 / 75 % | 100 / 88 / 90 % | 75 % |
| **8** | 90 / 97 / 87 % | 100 / 100 / 100 % | 90 / 98 / 78 % | 78 % |

At 15 the training loss fell to 1e-4 and extraction's seed 2 answered a training city for held-out ones; at 8 every
extraction seed is exact, and the misses left are held-out phrasings no rate tried fixed (intent on seeds 0 and 2
stayed at 80-92 % for 3 to 6 epochs at multipliers 5 to 15; contact's seed 2 reads "Khan, Nina - 57 - Denver"
as first name "Nina"). Fewer or more layers, rank 8 or dropout 0.1 were worse; the whole grid is in
docs/benchmarks.md. ``HIDDEN_NOISE`` (below) took every task and seed to 90 % or more."""
HIDDEN_NOISE = 0.15
"""Supervised training's noise on the hidden state entering the lowest LoRA layer: each token gets Gaussian noise
of 0.15 times its own norm, in training steps only (``adapters.trainable.TrainableModel``; NEFTune's regulariser,
moved from the embeddings to where training starts). It keeps the model from reading a held-out template by the
training templates' surface. Measured like the multiplier, at 4 epochs and multiplier 8 (``bench/sft_sweep.py
--noise 0,0.15``; AMD EPYC with AVX-512, no AMX, 2 cores, bf16 training):

| noise | intent | extract | contact | worst | mean |
|---|---|---|---|---|---|
| 0 (before) | 90 / 95 / 87 % | 100 / 100 / 100 % | 93 / 87 / 88 % | 87 % | 93.3 % |
| **0.15** | 95 / 98 / 90 % | 100 / 100 / 95 % | 97 / 93 / 92 % | **90 %** | 95.6 % |

A trial on seeds 0 and 2 outside the job's loop (noise drawn per example rather than per padded batch) gave at 0.3
contact 97 / 95 % but extraction's seed 0 92 %; at 0.6 contact 100 % and intent's seed 2 78 %. Training time is
unchanged (one random tensor a step)."""


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None = None
    """DPO only: how far from the starting model the preferences may pull the trained one."""

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if self.beta is None:
            del values["beta"]
        return values


def choose(n_examples: int, requested: dict[str, Any], method: str = "supervised") -> Hyperparameters:
    """The values for a job of ``n_examples`` examples (pairs, for DPO): what was asked, and for each ``"auto"``
    the rule (DPO's beta: ``DPO_BETA``)."""
    dpo = method == "dpo"
    batch_size = requested.get("batch_size", "auto")
    if batch_size == "auto":
        batch_size = max(1, min(MAX_BATCH, n_examples // 16))
    n_epochs = requested.get("n_epochs", "auto")
    if n_epochs == "auto":
        passes, fewest, most = (DPO_PAIR_PASSES, 1, 6) if dpo else (EXAMPLE_PASSES, 2, 10)
        n_epochs = max(fewest, min(most, round(passes / max(n_examples, 1))))
    multiplier = requested.get("learning_rate_multiplier", "auto")
    if multiplier == "auto":
        # A peak rate (falling linearly to 0) set at the full batch of 8; smaller batches take smaller steps.
        multiplier = round((DPO_MULTIPLIER if dpo else SUPERVISED_MULTIPLIER) * math.sqrt(batch_size / MAX_BATCH), 2)
    beta = requested.get("beta", "auto")
    chosen_beta = (DPO_BETA if beta == "auto" else float(beta)) if dpo else None
    return Hyperparameters(int(n_epochs), int(batch_size), float(multiplier), chosen_beta)


# DPO (``method.type == "dpo"``): batch as for supervised training (pairs, at most 8), about 600 pair-passes in
# all (200 pairs: 3 epochs; within 1 to 6), a peak rate of 3e-3 (multiplier 15 at batch 8), beta 0.1
# (the usual value), and the preferred answers' NLL added to DPO's loss at weight 1
# (``adapters.preference.PREFERRED_NLL_WEIGHT``). Measured in process (``bench/preference_sweep.py --pairs 200``,
# greedy answers to the held-out prompts; the epochs:multiplier:beta:nll grid point in each row):
#
# | task | grid point | preferred style (held out) | training | machine |
# |---|---|---|---|---|
# | one_word | base model | 0 % | | EPYC, AVX-512 |
# | one_word | 2:5:0.1 (no NLL) | 8 % | 198 s | EPYC, AVX-512, loaded |
# | one_word | 2:15:0.1 (no NLL) | **92 %** | 282 s | EPYC, AVX-512, loaded |
# | bullets | base model | 0 % | | Xeon, AMX |
# | bullets | 2:15:0.1 (no NLL) | 0 % | 129 s | EPYC, AVX-512, loaded |
# | bullets | 2:15:0.1:1 | **95 %** | 901 s | Xeon, AMX, load 6-16 |
# | capitals | 2:15:0.1:1 | 89 % | 162 s | Xeon, AMX, loaded |
# | capitals | 2:15:0.1:2 | 89 % | 78 s | Xeon, AMX, quiet |
# | capitals | 3:15:0.1:1 | **92 %** | 77 s | Xeon, AMX, quiet |
# | one_word | 2:15:0.1:1 | **100 %** | 55 s | Xeon, AMX, quiet |
#
# So DPO alone (no NLL) never learnt the bullet lists (it made the prose answer unlikely without making a list
# likely): the NLL term fixed that; capitals needed a third epoch. The Xeon is a 2-core Intel Xeon with AVX-512 and
# AMX (bf16 training); EPYC: a 2-core AMD EPYC with AVX-512, no AMX. Through the gateway, with these defaults:
# ``bench/fine_tuning_quality.py`` (docs/benchmarks.md). Also measured on tiny sets: 8 one-word pairs (train =
# validation) at 2, 4, 5, 0.1: loss 0.693 -> 0.133, reward accuracy 100 %.
DPO_PAIR_PASSES = 600
"""DPO's auto epochs aim at about this many pairs seen in all (200 pairs: 3 epochs), within 1 to 6 epochs."""
DPO_MULTIPLIER = 15.0
"""DPO's auto ``learning_rate_multiplier`` at the full batch of 8 (a peak rate of 3e-3)."""
DPO_BETA = 0.1
