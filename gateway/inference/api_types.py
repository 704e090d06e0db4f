"""Request bodies of the OpenAI surface (pydantic, strict types: a string where a number belongs is a 400).

Nothing a client sends is silently dropped: an unknown field is a 400 naming it (``extra="forbid"``), and a
known OpenAI field we cannot honour is declared ``refused_unless(...)``: null, or a value that asks for
nothing (``tools: []``, ``tool_choice: "none"``), passes, anything else is a 400 naming it. The few fields
accepted and ignored (they change nothing we answer) are listed in ``ACCEPTED_AND_IGNORED``. Checks that span
several fields live in ``check()``, which raises ``InvalidRequestError`` naming the offending ``param``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from gateway import bounds
from gateway.bounds import Metadata
from gateway.errors import InvalidRequestError

ModelId = Annotated[str, Field(min_length=1, max_length=bounds.MODEL)]
Seed = Annotated[int, Field(ge=-(2**63), le=bounds.INT64_MAX)]
EndUser = Annotated[str, Field(max_length=bounds.USER)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
MaxTokens = Annotated[int, Field(ge=1, le=bounds.INT32_MAX)]
StopField = str | Annotated[list[str], Field(max_length=4)] | None


ACCEPTED_AND_IGNORED = frozenset(
    {
        "metadata",
        "parallel_tool_calls",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
    }
)
"""Chat fields OpenAI clients send that change nothing we answer: ``metadata`` (labels for OpenAI's stored
completions, checked against OpenAI's bounds), ``parallel_tool_calls`` (no tools are accepted), the prompt
cache hints (our prefix cache is automatic) and ``safety_identifier`` (OpenAI's abuse monitoring id)."""


def refused_unless(*harmless: Any) -> AfterValidator:
    """A known OpenAI field we cannot honour: null or one of ``harmless`` passes, anything else is a 400."""

    def refuse(value: Any, info: ValidationInfo) -> Any:
        if value is None or any(value == allowed for allowed in harmless):
            return value
        raise ValueError(f"{info.field_name} is not supported by this server")

    return AfterValidator(refuse)


Refused = Annotated[Any, refused_unless()]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingFields(_Request):
    model: ModelId
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: int = Field(default=1, ge=1, le=128)
    stop: StopField = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: EndUser | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: Annotated[Any, refused_unless({})] = None
    ignore_eos: bool = False
    """vLLM extension, used by benchmarks: keep generating past the end-of-sequence token."""

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value == "" or (isinstance(value, list) and "" in value):
            raise ValueError("stop sequences must not be empty")
        return value

    def check(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError("stream_options is only allowed when stream is true", param="stream_options")

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(_Request):
    type: Literal["text"]
    text: str


def _text_parts_only(part: Any) -> Any:
    """An image, audio, file (or any other) part is refused as such, not as "not a valid string": the models
    served here read text only. The error's type is its ``code`` (``gateway.errors``)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if isinstance(kind, str) and kind != "text":
        raise PydanticCustomError(
            "unsupported_content_type",
            "content parts of type '{kind}' are not supported: this model accepts text only (parts of type 'text')",
            {"kind": kind[:64]},
        )
    return part


ContentPart = Annotated[TextPart, BeforeValidator(_text_parts_only)]


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: Annotated[str, Field(max_length=64)] | None = None
    # What an assistant message sent back as we answered it may carry (null or empty), and tool messages.
    refusal: Refused = None
    tool_calls: Annotated[Any, refused_unless([])] = None
    tool_call_id: Refused = None
    function_call: Refused = None
    audio: Refused = None
    annotations: Annotated[Any, refused_unless([])] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    store: Annotated[Any, refused_unless(False)] = None
    """Stored completions are not kept here: ``store: true`` is refused."""
    tools: Annotated[Any, refused_unless([])] = None
    tool_choice: Annotated[Any, refused_unless("none")] = None
    functions: Refused = None
    function_call: Annotated[Any, refused_unless("none")] = None
    modalities: Annotated[Any, refused_unless(["text"])] = None
    audio: Refused = None
    prediction: Refused = None
    web_search_options: Refused = None
    reasoning_effort: Refused = None
    verbosity: Refused = None
    moderation: Refused = None
    service_tier: Annotated[Any, refused_unless("auto", "default")] = None
    # ACCEPTED_AND_IGNORED:
    metadata: Metadata | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: Annotated[str, Field(max_length=bounds.USER)] | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: EndUser | None = None

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type", "text") != "text":
            raise ValueError("only response_format {'type': 'text'} is supported by this server")
        return value

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


PromptField = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_SamplingFields):
    prompt: PromptField
    max_tokens: MaxTokens | None = 16
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: PromptField) -> PromptField:
        items: list[Any] = [value] if isinstance(value, str) else list(value)
        if not items or any(len(item) == 0 for item in items if isinstance(item, str | list)):
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (fill-in-the-middle) is not supported by this model")
        return value

    def check(self) -> None:
        super().check()
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequestError("best_of is not supported; leave it unset or equal to n", param="best_of")
        if self.echo and self.logprobs is not None:
            raise InvalidRequestError("echo together with logprobs is not supported by this server", param="echo")
