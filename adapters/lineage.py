"""A fine-tuning job's lineage: the base model it trains on and the fine-tuned models it continues from, nearest
first (``ft:`` models, or checkpoints of them). It is chosen when the job is created and kept in the job's row
(``lineage``); ``Lineage.of`` is the one place it is read back. A job that continues a model starts from a copy of
that model's weights, taken into the job's own directory when training starts (``PARENT_WEIGHTS``): the new model
owns its weights, so deleting the parent afterwards breaks neither the job nor its model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapters.store import FineTuningJob

__all__ = ["MAX_GENERATIONS", "PARENT_WEIGHTS", "Lineage"]

MAX_GENERATIONS = 32
"""A model continued this many times over cannot be continued again (the lineage a job keeps stays bounded)."""
PARENT_WEIGHTS = "parent"
"""Under the job's directory: the copy of the parent's adapter the job starts from."""


class Lineage(BaseModel):
    """Our extension of the job object: ``base_model`` and the ``parents``, nearest first (empty: trained from
    the base model)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    base_model: str
    parents: list[str] = Field(default_factory=list)

    @property
    def parent(self) -> str:
        """The model the job trains from: its nearest parent, else its base model."""
        return self.parents[0] if self.parents else self.base_model

    @property
    def continues(self) -> bool:
        return bool(self.parents)

    def continued_as(self, model: str) -> Lineage:
        """The lineage of a job that continues ``model``, a model of this lineage."""
        return Lineage(base_model=self.base_model, parents=[model, *self.parents])

    def column(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def of(cls, job: FineTuningJob) -> Lineage:
        """The lineage a job's row holds (a job written before lineage was kept trained from its ``model``)."""
        return cls.model_validate(job.lineage) if job.lineage else cls(base_model=job.model)
