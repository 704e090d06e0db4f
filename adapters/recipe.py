"""A fine-tuning job's recipe: everything about a job that decides the adapter it trains, chosen when the job
is created (every ``"auto"`` already resolved) and read back by the worker in another process.

The recipe travels in the job's row (``method``, ``hyperparameters``, ``lora`` and ``seed`` columns: their JSON is
also what the API shows of the job); ``columns`` and ``TrainingRecipe.of`` are the one place it is written and
read, and reading validates it, so the worker never reads a recipe by string key."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from adapters.hyperparameters import BASE_LEARNING_RATE, Hyperparameters
from adapters.store import FineTuningJob
from adapters.trainable import LoraSpec

__all__ = ["LoraShape", "TrainingRecipe"]

Keep = Literal["best", "last"]
Method = Literal["supervised", "dpo"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class LoraShape(_Frozen):
    """The LoRA adapter's shape; ``layers`` is "auto" (the top third) until the worker has trained it."""

    rank: int = LoraSpec().rank
    alpha: int = LoraSpec().alpha
    target_modules: tuple[str, ...] = LoraSpec().target_modules
    layers: int | Literal["auto"] = "auto"

    def spec(self) -> LoraSpec:
        return LoraSpec(
            rank=self.rank,
            alpha=self.alpha,
            target_modules=self.target_modules,
            layers=None if self.layers == "auto" else self.layers,
        )

    def column(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class TrainingRecipe(_Frozen):
    method: Method = "supervised"
    """Supervised fine-tuning on examples, or DPO on preference pairs (``adapters.preference``)."""
    hyperparameters: Hyperparameters
    lora: LoraShape
    keep_checkpoint: Keep = "best"
    """With a validation file, the adapter is the best epoch's checkpoint, or the last one."""
    seed: int

    @property
    def beta(self) -> float:
        """DPO's beta (every DPO recipe has one: ``adapters.hyperparameters.choose`` sets it)."""
        if self.hyperparameters.beta is None:
            raise ValueError("a DPO recipe without beta")
        return self.hyperparameters.beta

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.hyperparameters.learning_rate_multiplier

    def columns(self) -> dict[str, Any]:
        """The job row's columns that hold the recipe."""
        return {
            "hyperparameters": {**self.hyperparameters.as_dict(), "keep_checkpoint": self.keep_checkpoint},
            "lora": self.lora.column(),
            "seed": self.seed,
            "method": self.method,
        }

    @classmethod
    def of(cls, job: FineTuningJob) -> TrainingRecipe:
        """The recipe a job's row holds (rows written before there was a recipe read the same)."""
        stored = dict(job.hyperparameters)
        keep = stored.pop("keep_checkpoint", "best")
        return cls.model_validate(
            {
                "method": job.method,
                "hyperparameters": stored,
                "lora": job.lora,
                "keep_checkpoint": keep,
                "seed": job.seed,
            }
        )
