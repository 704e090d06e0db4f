"""Request bodies of ``/v1/evals`` in OpenAI's shapes (pydantic, bounded): an eval's item schema (or the tenant's
stored chat completions) and testing criteria, and a run's data source (a model, an input-messages template or a
reference to the item's own messages, sampling parameters, and items given inline, as an uploaded JSONL file, or
picked from the stored completions). What we cannot honour is refused with a 400 naming it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gateway import bounds
from gateway.bounds import Metadata
from gateway.evals.templates import TemplateError, render
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


class StoredCompletionsDataSourceConfig(_Body):
    """Items are the tenant's stored chat completions (``store: true``) whose metadata has these pairs (a run's
    source may add more): ``item`` holds a completion's ``id``, ``model``, ``input`` messages and ``metadata``,
    ``sample`` its answer (``output_text``)."""

    type: Literal["stored_completions"]
    metadata: Metadata | None = None


DataSourceConfig = Annotated[CustomDataSourceConfig | StoredCompletionsDataSourceConfig, Field(discriminator="type")]


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
    data_source_config: DataSourceConfig
    testing_criteria: Annotated[
        list[TestingCriterion], Field(min_length=1, max_length=MAX_CRITERIA), AfterValidator(_unique_names)
    ]
    metadata: Metadata | None = None


class EvalUpdate(_Body):
    name: Name | None = None
    metadata: Metadata | None = None


MessageRole = Literal["system", "developer", "user", "assistant"]
_ROLES: tuple[MessageRole, ...] = ("system", "developer", "user", "assistant")


class TemplateMessage(_Body):
    role: MessageRole
    content: TemplateText
    type: Literal["message"] = "message"


class InputMessagesTemplate(_Body):
    type: Literal["template"]
    template: Annotated[list[TemplateMessage], Field(min_length=1, max_length=MAX_TEMPLATE_MESSAGES)]

    def rendered(self, item: dict[str, Any]) -> list[tuple[MessageRole, str]]:
        """Each message's role and its content with the item's variables filled in."""
        return [(message.role, render(message.content, {"item": item})) for message in self.template]


class ItemReference(_Body):
    """The item's own messages (``item.input`` of a stored completion), sent as they are."""

    type: Literal["item_reference"]
    item_reference: Annotated[str, Field(pattern=r"^item(\.[A-Za-z0-9_\-]+)+$", max_length=256)]

    def rendered(self, item: dict[str, Any]) -> list[tuple[MessageRole, str]]:
        found: Any = {"item": item}
        for part in self.item_reference.split("."):
            if not isinstance(found, dict) or part not in found:
                raise TemplateError(f"{self.item_reference} is not in the item")
            found = found[part]
        if not isinstance(found, list) or not found or not all(_text_message(message) for message in found):
            raise TemplateError(f"{self.item_reference} is not a list of text messages")
        return [(_ROLES[_ROLES.index(message["role"])], message["content"]) for message in found]


def _text_message(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") in _ROLES and isinstance(message.get("content"), str)


InputMessages = Annotated[InputMessagesTemplate | ItemReference, Field(discriminator="type")]


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


UnixSeconds = Annotated[int, Field(ge=0, le=253_402_300_799)]


class StoredCompletionsSource(_Body):
    """The tenant's stored chat completions with all of these (and the eval's metadata), newest ``limit``."""

    type: Literal["stored_completions"]
    model: ModelId | None = None
    metadata: Metadata | None = None
    created_after: UnixSeconds | None = None
    created_before: UnixSeconds | None = None
    limit: Annotated[int, Field(ge=1, le=bounds.EVAL_RUN_ITEMS)] | None = None


Source = Annotated[FileContentSource | FileIdSource | StoredCompletionsSource, Field(discriminator="type")]


class CompletionsDataSource(_Body):
    """Sample each item from ``model`` with the rendered ``input_messages``, then grade it; or, over stored
    completions without ``input_messages``, grade each one's stored answer."""

    type: Literal["completions"]
    model: ModelId | None = None
    input_messages: InputMessages | None = None
    source: Source
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)

    @model_validator(mode="after")
    def _samples_or_stored(self) -> CompletionsDataSource:
        if self.input_messages is None and self.source.type != "stored_completions":
            raise ValueError("input_messages is required (only stored completions bring their own answers)")
        if self.input_messages is not None and self.model is None:
            raise ValueError("model is required to sample the items with input_messages")
        return self

    @property
    def sampled(self) -> bool:
        """Whether the run asks ``model`` for each item's sample (else it grades the stored answers)."""
        return self.input_messages is not None


class JsonlDataSource(_Body):
    """Grade samples the items bring along (``{"item": ..., "sample": {"output_text": ...}}``)."""

    type: Literal["jsonl"]
    source: Source


DataSource = Annotated[CompletionsDataSource | JsonlDataSource, Field(discriminator="type")]


class RunCreate(_Body):
    name: Name | None = None
    data_source: DataSource
    metadata: Metadata | None = None
