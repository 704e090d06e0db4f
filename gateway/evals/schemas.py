"""What ``/v1/evals`` answers, in OpenAI's shapes: evals, runs, output items, their lists and deletions.
Criteria, data sources, items, samples and grades are shown as they were given or recorded (JSON objects)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from adapters.api_objects import Epoch, RowObject
from adapters.pagination import CursorPage


class CustomDataSourceConfigOut(BaseModel):
    type: Literal["custom"] = "custom"
    schema_: dict[str, Any] = Field(alias="schema")
    """The JSON schema of an item (and of a sample, with ``include_sample_schema``)."""


class StoredCompletionsDataSourceConfigOut(BaseModel):
    type: Literal["stored_completions"] = "stored_completions"
    metadata: dict[str, str] | None
    schema_: dict[str, Any] = Field(alias="schema")
    """The JSON schema of an item (a stored completion) and of its sample (its answer)."""


class EvalOut(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    data_source_config: CustomDataSourceConfigOut | StoredCompletionsDataSourceConfigOut
    testing_criteria: list[dict[str, Any]]
    created_at: Epoch
    metadata: dict[str, Any] | None


class ResultCounts(BaseModel):
    total: int
    passed: int
    failed: int
    errored: int


class CriterionResult(BaseModel):
    testing_criteria: str
    passed: int
    failed: int


class ModelUsage(BaseModel):
    model_name: str
    invocation_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0


class EvalRunOut(RowObject):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    name: str
    model: str
    status: str
    created_at: Epoch
    data_source: dict[str, Any]
    error: dict[str, Any] | None
    result_counts: ResultCounts
    per_testing_criteria_results: list[CriterionResult] = Field(validation_alias="per_criteria")
    usage: dict[str, int] | None = Field(default=None, exclude=True)
    """The run's sampling, summed when it ended (shown as ``per_model_usage``)."""
    metadata: dict[str, Any] | None = Field(validation_alias="user_metadata")

    @computed_field  # type: ignore[prop-decorator]  # mypy does not know pydantic's decorator on a property
    @property
    def per_model_usage(self) -> list[ModelUsage]:
        usage = self.usage or {}
        if not usage.get("invocation_count"):
            return []
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        return [
            ModelUsage(
                model_name=self.model,
                invocation_count=usage["invocation_count"],
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
            )
        ]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def report_url(self) -> str:
        return f"/v1/evals/{self.eval_id}/runs/{self.id}"


class OutputItemOut(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: Epoch
    status: str
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any] | None


class EvalList(CursorPage[EvalOut, str]):
    """A page of evals."""


class RunList(CursorPage[EvalRunOut, str]):
    """A page of an eval's runs."""


class OutputItemList(CursorPage[OutputItemOut, str]):
    """A page of a run's graded items."""


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: Literal[True] = True
    eval_id: str


class RunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: Literal[True] = True
    run_id: str
