"""Request bodies of the OpenAI surface (pydantic, strict types: a string where a number belongs is a 400).

Nothing a client sends is silently dropped: an unknown field is a 400 naming it (``extra="forbid"``), and a
known OpenAI field we cannot honour is declared ``refused_unless(...)``: null, or a value that asks for
nothing (``logit_bias: {}``, ``store: false``), passes, anything else is a 400 naming it
(``gateway.inference.request_fields``). The few fields accepted and ignored (they change nothing we answer) are
listed in ``ACCEPTED_AND_IGNORED``. Checks that span several fields live in ``check()``, which raises
``InvalidRequestError`` naming the offending ``param``. Structured-output fields are in
``gateway.inference.format_types``, tools in ``gateway.inference.tool_types``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from engine.protocol import StructuredKind
from gateway import bounds
from gateway.bounds import Metadata
from gateway.errors import InvalidRequestError
from gateway.inference.format_types import JsonSchemaFormat, ResponseFormat, StructuredOutputsField, schema_text
from gateway.inference.request_fields import (
    EndUser,
    MaxTokens,
    ModelId,
    Penalty,
    Refused,
    Seed,
    StopField,
    StrictRequest,
    Temperature,
    TopP,
    refused_unless,
)
from gateway.inference.tool_types import (
    LEGACY_FUNCTIONS,
    MAX_TOOLS,
    FunctionTool,
    NamedToolChoice,
    ToolCallId,
    ToolCallMade,
)

ACCEPTED_AND_IGNORED = frozenset(
    {
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
    }
)
"""Chat fields OpenAI clients send that change nothing we answer: the prompt cache hints (our prefix cache is
automatic) and ``safety_identifier`` (OpenAI's abuse monitoring id)."""


class StreamOptions(StrictRequest):
    include_usage: bool = False


class _SamplingFields(StrictRequest):
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
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsField | None = None
    """vLLM extension; so are the older ``guided_*`` fields below (one constraint per request, whichever field)."""
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = None
    guided_grammar: str | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value == "" or (isinstance(value, list) and "" in value):
            raise ValueError("stop sequences must not be empty")
        return value

    def check(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError("stream_options is only allowed when stream is true", param="stream_options")

    def constraint(self) -> tuple[str, StructuredKind, Any] | None:
        """The structured-output constraint asked for, with the param that carries it (see
        ``gateway.inference.structured.Requested``); a 400 naming the params when several ask for one."""
        given: list[tuple[str, StructuredKind, Any]] = []
        if self.response_format is not None and self.response_format.type == "json_object":
            given.append(("response_format", "json_object", True))
        elif isinstance(self.response_format, JsonSchemaFormat):
            given.append(("response_format", "json", self.response_format.json_schema.schema_))
        if self.structured_outputs is not None:
            given.append(("structured_outputs", *self.structured_outputs.constraint()))
        guided_json = (
            schema_text(self.guided_json, "guided_json") if isinstance(self.guided_json, str) else self.guided_json
        )
        guided: tuple[tuple[str, StructuredKind, Any], ...] = (
            ("guided_json", "json", guided_json),
            ("guided_regex", "regex", self.guided_regex),
            ("guided_choice", "choice", self.guided_choice),
            ("guided_grammar", "grammar", self.guided_grammar),
        )
        given.extend(item for item in guided if item[2] is not None)
        if len(given) > 1:
            names = ", ".join(param for param, _, _ in given)
            raise InvalidRequestError(
                f"Only one structured-output constraint per request; this one sets {names}.", param=given[1][0]
            )
        return given[0] if given else None

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(StrictRequest):
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


class ChatMessage(StrictRequest):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: Annotated[str, Field(max_length=64)] | None = None
    tool_calls: Annotated[list[ToolCallMade], Field(max_length=MAX_TOOLS)] | None = None
    """An assistant's calls."""
    tool_call_id: ToolCallId | None = None
    """The call a ``tool`` message answers."""
    # What an assistant message sent back as we answered it may carry (null or empty).
    refusal: Refused = None
    function_call: Any = None
    audio: Refused = None
    annotations: Annotated[Any, refused_unless([])] = None

    @field_validator("function_call")
    @classmethod
    def _no_legacy_call(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(f"function_call {LEGACY_FUNCTIONS} (tool_calls)")
        return value

    def check(self, param: str) -> None:
        if self.tool_calls and self.role != "assistant":
            raise InvalidRequestError("Only assistant messages may carry tool_calls.", param=f"{param}.tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise InvalidRequestError(
                "A tool message needs the tool_call_id it answers, and only tool messages carry one.",
                param=f"{param}.tool_call_id",
            )

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
    store: bool | None = None
    """True: keep the request and its completion (``gateway.stored_completions``), with ``metadata``."""
    metadata: Metadata | None = None
    """Labels of a stored completion (OpenAI's bounds); without ``store`` they change nothing."""
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Any = None
    function_call: Any = None
    modalities: Annotated[Any, refused_unless(["text"])] = None
    audio: Refused = None
    prediction: Refused = None
    web_search_options: Refused = None
    reasoning_effort: Refused = None
    verbosity: Refused = None
    moderation: Refused = None
    service_tier: Annotated[Any, refused_unless("auto", "default")] = None
    # ACCEPTED_AND_IGNORED:
    prompt_cache_key: Annotated[str, Field(max_length=bounds.USER)] | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: EndUser | None = None

    @field_validator("functions", "function_call")
    @classmethod
    def _no_legacy_functions(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise ValueError(f"{info.field_name} {LEGACY_FUNCTIONS} and tool_choice")
        return value

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
        for index, message in enumerate(self.messages):
            message.check(f"messages[{index}]")

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
