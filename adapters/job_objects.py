"""Fine-tuning jobs, their events and checkpoints in OpenAI's object shapes (what ``/v1/fine_tuning/jobs``
answers), and their lists. ``adapters.jobs`` builds them from the rows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from adapters.pagination import CursorPage, Page


class SupervisedMethod(BaseModel):
    hyperparameters: dict[str, Any]


class JobMethod(BaseModel):
    type: Literal["supervised"]
    supervised: SupervisedMethod


class FineTuningJobOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str
    created_at: int
    finished_at: int | None
    status: str
    fine_tuned_model: str | None
    organization_id: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    """n_epochs, batch_size and learning_rate_multiplier as chosen, and our ``keep_checkpoint``."""
    method: JobMethod
    lora: dict[str, Any]
    """Our extension: the adapter's rank, alpha, target modules and layers."""
    trained_tokens: int | None
    error: dict[str, Any] | None
    result_files: list[str] = []
    seed: int
    suffix: str | None
    estimated_finish: None = None
    integrations: list[Any] = []
    metadata: dict[str, Any] | None


class JobEventOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: Any


class JobCheckpointOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuning_job_id: str
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, Any]


class JobList(Page[FineTuningJobOut]):
    """A page of jobs, newest first."""


class EventList(Page[JobEventOut]):
    """A page of a job's events, newest first."""


class CheckpointList(CursorPage[JobCheckpointOut, str]):
    """A page of a job's checkpoints, latest step first."""
