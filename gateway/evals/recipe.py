"""An eval run's recipe and statuses: how the runner samples each item, written with the run by the API and read
back by whichever gateway's runner claims it.

The recipe travels in the run's ``data_source`` column (its JSON is also what the API shows of the run, with the
source summarized rather than echoed back whole); ``data_source_column`` and ``run_recipe`` are the one place it
is written and read, and reading validates it, so the runner never reads a data source by string key."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from adapters.leases import Lease
from gateway.db import EvalRun
from gateway.evals.models import InputMessages, RunCreate, SamplingParams


class RunStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


class ItemStatus(StrEnum):
    PENDING = "pending"
    """Not yet sampled and graded: the runner's to do, not an output item yet."""
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"


FINAL = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED)
PENDING = ItemStatus.PENDING

RUN_LEASE = Lease.on(EvalRun, owner=EvalRun.runner_id)
"""A run is leased by the runner executing it (``runner_id``, ``heartbeat_at``)."""


class _Stored(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class CompletionsRecipe(_Stored):
    """Sample each item from the run's model with the rendered ``input_messages``, then grade it (without
    ``input_messages``, over stored completions: grade the samples the items brought, as a jsonl run)."""

    type: Literal["completions"]
    input_messages: InputMessages | None = None
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)


class JsonlRecipe(_Stored):
    """Grade the samples the items brought along."""

    type: Literal["jsonl"]


RunRecipe = Annotated[CompletionsRecipe | JsonlRecipe, Field(discriminator="type")]
_RECIPE: TypeAdapter[CompletionsRecipe | JsonlRecipe] = TypeAdapter(RunRecipe)


def data_source_column(body: RunCreate) -> dict[str, Any]:
    """The run's ``data_source`` column: the request's data source, its inline items summarized."""
    source = body.data_source.source
    summary: dict[str, Any]
    if source.type == "file_id":
        summary = {"type": "file_id", "id": source.id}
    elif source.type == "file_content":
        summary = {"type": "file_content", "items": len(source.content)}
    else:
        summary = source.model_dump()
    return body.data_source.model_dump(exclude={"source"}) | {"source": summary}


def run_recipe(run: EvalRun) -> CompletionsRecipe | JsonlRecipe:
    """The recipe the run's ``data_source`` column holds."""
    recipe = _RECIPE.validate_python(run.data_source)
    if isinstance(recipe, CompletionsRecipe) and recipe.input_messages is None:
        return JsonlRecipe(type="jsonl")  # stored completions graded as they were answered
    return recipe
