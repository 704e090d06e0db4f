"""What ``/v1/evals`` answers, in OpenAI's shapes: evals, runs, output items, their lists and deletions.
Criteria, data sources, items, samples and grades are shown as they were given or recorded (JSON objects)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from adapters.pagination import CursorPage


class CustomDataSourceConfigOut(BaseModel):
    type: Literal["custom"] = "custom"
    schema_: dict[str, Any] = Field(alias="schema")
    """The JSON schema of an item (and of a sample, with ``include_sample_schema``)."""


class EvalOut(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    data_source_config: CustomDataSourceConfigOut
    testing_criteria: list[dict[str, Any]]
    created_at: int
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


class EvalRunOut(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    name: str
    model: str
    status: str
    created_at: int
    data_source: dict[str, Any]
    error: dict[str, Any] | None
    result_counts: ResultCounts
    per_testing_criteria_results: list[CriterionResult]
    per_model_usage: list[ModelUsage]
    report_url: str
    metadata: dict[str, Any] | None


class OutputItemOut(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
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
