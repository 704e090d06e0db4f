"""Fine-tuning jobs, their events and checkpoints in OpenAI's object shapes (what ``/v1/fine_tuning/jobs``
answers), read from their rows, and their lists."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field, model_validator

from adapters.api_objects import Epoch, RowObject
from adapters.lineage import Lineage
from adapters.pagination import CursorPage, Page


class MethodHyperparameters(BaseModel):
    hyperparameters: dict[str, Any]


class JobMethod(BaseModel):
    """OpenAI's ``method``: its type, and under that type's name the hyperparameters as chosen (the other null)."""

    type: Literal["supervised", "dpo"]
    supervised: MethodHyperparameters | None = None
    dpo: MethodHyperparameters | None = None


class FineTuningJobOut(RowObject):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str
    created_at: Epoch
    finished_at: Epoch | None
    status: str
    fine_tuned_model: str | None
    organization_id: str = Field(validation_alias="tenant_id")
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    """n_epochs, batch_size and learning_rate_multiplier as chosen, and our ``keep_checkpoint``."""
    lora: dict[str, Any]
    """Our extension: the adapter's rank, alpha, target modules and layers."""
    trained_tokens: int | None
    error: dict[str, Any] | None
    result_files: list[str] = Field(default_factory=list)
    seed: int
    suffix: str | None
    estimated_finish: None = None
    integrations: list[Any] = Field(default_factory=list)
    metadata: dict[str, Any] | None = Field(validation_alias="user_metadata")
    method_type: Literal["supervised", "dpo"] = Field("supervised", validation_alias="method", exclude=True)
    lineage: Lineage | None = None
    """Our extension: the base model and the fine-tuned models this job continues from, nearest first."""

    @model_validator(mode="after")
    def _lineage_of_older_rows(self) -> FineTuningJobOut:
        if self.lineage is None:  # a job recorded before lineage was kept trained from its base model
            self.lineage = Lineage(base_model=self.model)
        return self

    @computed_field  # type: ignore[prop-decorator]  # mypy does not know pydantic's decorator on a property
    @property
    def method(self) -> JobMethod:
        chosen = {k: v for k, v in self.hyperparameters.items() if k != "keep_checkpoint"}
        return JobMethod.model_validate({"type": self.method_type, self.method_type: {"hyperparameters": chosen}})


class JobEventOut(RowObject):
    id: str = Field(validation_alias="public_id")
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: Epoch
    level: str
    message: str
    type: str
    data: Any


class JobCheckpointOut(RowObject):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: Epoch
    fine_tuning_job_id: str = Field(validation_alias="job_id")
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, Any]


class JobList(Page[FineTuningJobOut]):
    """A page of jobs, newest first."""


class EventList(Page[JobEventOut]):
    """A page of a job's events, newest first."""


class CheckpointList(CursorPage[JobCheckpointOut, str]):
    """A page of a job's checkpoints, latest step first."""
