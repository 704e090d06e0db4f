"""What the inference routes answer, in OpenAI's shapes: models (``/v1/models``), and the non-streamed bodies of
``/v1/chat/completions`` (``chat.completion``) and ``/v1/completions`` (``text_completion``).

The completion routes build their JSON directly (the hot path); these models document it in ``/openapi.json``,
together with the ``text/event-stream`` a ``"stream": true`` request gets (``openapi_responses``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adapters.pagination import ListOf
from engine.protocol import FinishReason
from gateway import bounds


class AliasTarget(BaseModel):
    """One model a tenant's alias may pick, and its share of the alias's requests in percent."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=bounds.MODEL)
    weight: int = Field(default=100, ge=1, le=100)


class ModelOut(BaseModel):
    """OpenAI's model object; ``root`` and ``parent`` as vLLM's model cards name them (the base model, and the
    model a fine-tuned one was trained from), and our ``fine_tuning_job_id``: the job that made it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str | None = None
    parent: str | None = None
    fine_tuning_job_id: str | None = None
    targets: list[AliasTarget] | None = Field(
        default=None, description="Our extension, on a tenant's alias only: the models it stands for."
    )


class ModelList(ListOf[ModelOut]):
    """The models the key may use: base models, the tenant's fine-tuned ones and its aliases."""


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: Literal[True] = True


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut]
    refusal: None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str
    """JSON text."""


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    """Null when the answer is tool calls only."""
    refusal: None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | Literal["tool_calls"] | None


class _Completion(BaseModel):
    id: str
    created: int
    model: str
    system_fingerprint: None
    usage: Usage


class ChatCompletion(_Completion):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class TextCompletion(_Completion):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]


def openapi_responses(body: type[BaseModel], chunk: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a completion route: ``body`` as JSON, or server-sent ``chunk`` objects when streamed."""
    events = {"type": "string", "description": f'"data: {{{chunk}}}" events, then "data: [DONE]"'}
    return {200: {"model": body, "content": {"text/event-stream": {"schema": events}}}}
