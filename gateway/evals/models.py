"""Request bodies of ``/v1/evals`` in OpenAI's shapes (pydantic, bounded): an eval's item schema and testing
criteria, and a run's data source (a model, an input-messages template, sampling parameters, and items given
inline or as an uploaded JSONL file). What we cannot honour is refused with a 400 naming it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway import bounds
from gateway.bounds import Metadata
from gateway.inference.request_fields import ModelId, Seed

Name = Annotated[str, Field(min_length=1, max_length=bounds.EVAL_NAME)]
TemplateText = Annotated[str, Field(max_length=32_768)]
MAX_CRITERIA = 32
MAX_TEMPLATE_MESSAGES = 64


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class CustomDataSourceConfig(_Body):
    type: Literal["custom"]
    item_schema: dict[str, Any]
    """Checked by ``gateway.documents`` in a worker process (``items.checked_schema``): bounded, referring only
    into itself, with regexes RE2 runs."""
    include_sample_schema: bool = False


class StringCheckGrader(_Body):
    type: Literal["string_check"]
    name: Name
    input: TemplateText
    reference: TemplateText
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(_Body):
    type: Literal["text_similarity"]
    name: Name
    input: TemplateText
    reference: TemplateText
    evaluation_metric: Literal["fuzzy_match"]
    pass_threshold: Annotated[float, Field(ge=0, le=1)]


TestingCriterion = Annotated[StringCheckGrader | TextSimilarityGrader, Field(discriminator="type")]


def _unique_names(criteria: list[Any]) -> list[Any]:
    names = [criterion.name for criterion in criteria]
    if len(set(names)) != len(names):
        raise ValueError("testing criteria need distinct names")
    return criteria


class EvalCreate(_Body):
    name: Name | None = None
    data_source_config: CustomDataSourceConfig
    testing_criteria: Annotated[
        list[TestingCriterion], Field(min_length=1, max_length=MAX_CRITERIA), AfterValidator(_unique_names)
    ]
    metadata: Metadata | None = None


class EvalUpdate(_Body):
    name: Name | None = None
    metadata: Metadata | None = None


class TemplateMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: TemplateText
    type: Literal["message"] = "message"


class InputMessagesTemplate(_Body):
    type: Literal["template"]
    template: Annotated[list[TemplateMessage], Field(min_length=1, max_length=MAX_TEMPLATE_MESSAGES)]


class SamplingParams(_Body):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=4096)] | None = None
    seed: Seed | None = None


class ContentItem(_Body):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(_Body):
    type: Literal["file_content"]
    content: Annotated[list[ContentItem], Field(min_length=1, max_length=bounds.EVAL_RUN_ITEMS)]


class FileIdSource(_Body):
    type: Literal["file_id"]
    id: Annotated[str, Field(min_length=1, max_length=40)]


Source = Annotated[FileContentSource | FileIdSource, Field(discriminator="type")]


class CompletionsDataSource(_Body):
    """Sample each item from ``model`` with the rendered ``input_messages``, then grade it."""

    type: Literal["completions"]
    model: ModelId
    input_messages: InputMessagesTemplate
    source: Source
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)


class JsonlDataSource(_Body):
    """Grade samples the items bring along (``{"item": ..., "sample": {"output_text": ...}}``)."""

    type: Literal["jsonl"]
    source: Source


DataSource = Annotated[CompletionsDataSource | JsonlDataSource, Field(discriminator="type")]


class RunCreate(_Body):
    name: Name | None = None
    data_source: DataSource
    metadata: Metadata | None = None
