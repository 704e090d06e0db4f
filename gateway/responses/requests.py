"""The body of ``POST /v1/responses`` in OpenAI's shape (pydantic, strict, ``extra="forbid"``).

``input`` is a string or a list of items: messages (role ``user``, ``system``, ``developer`` or ``assistant``;
content a string or ``input_text`` / ``output_text`` parts; an assistant message of an earlier answer sent back
whole, with its ``id`` and ``status``, is taken too). Images, files and audio are refused (the models served
here read text), as are the fields we cannot honour: built-in tools, ``background``, ``conversation``, ``prompt``,
``reasoning`` with an effort, logprobs. Function tools are the chat route's (``gateway.inference.tools``): their
calls come back as ``function_call`` output items, and their results go in as ``function_call_output`` items."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from gateway import bounds
from gateway.bounds import Metadata
from gateway.inference.request_fields import (
    EndUser,
    ModelId,
    Refused,
    Temperature,
    TopP,
    refused_unless,
)
from gateway.inference.tool_types import MAX_TOOLS, TOOL_ARGUMENTS, TOOL_DESCRIPTION, ToolCallId, ToolName

RESPONSE_ID_MAX = 64
OBJECT_ID_PATTERN = r"^[A-Za-z0-9_-]+$"
"""Response and item ids are ``resp_`` / ``msg_`` + 32 hex; a longer one, or one with other characters, cannot be
ours (refused before any lookup)."""
TEXT_ONLY = "this model accepts text only"
_MEDIA_PARTS = ("input_image", "input_file", "input_audio")
HARMLESS_INCLUDES = frozenset(
    {
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
    }
)
"""``include`` values that ask for parts of items we never produce (no built-in tools, no images, no reasoning):
accepted, they change nothing. ``message.output_text.logprobs`` is refused (logprobs are not offered here)."""

ResponseId = Annotated[str, Field(min_length=1, max_length=RESPONSE_ID_MAX, pattern=OBJECT_ID_PATTERN)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class InputText(_Body):
    type: Literal["input_text"]
    text: str


class OutputText(_Body):
    """The text of an earlier answer, sent back as input."""

    type: Literal["output_text"]
    text: str
    annotations: Annotated[Any, refused_unless([])] = None
    logprobs: Any = None
    """Of the earlier answer: nothing the model reads."""


class _NotText(BaseModel):
    """An image, a file or audio: refused with a message that says why."""

    model_config = ConfigDict(extra="allow")

    type: str

    @field_validator("type")
    @classmethod
    def _refuse(cls, value: str) -> str:
        reason = TEXT_ONLY if value in _MEDIA_PARTS else "content parts are input_text or output_text"
        raise ValueError(f"{value[:64]!r} is not supported: {reason}")


# The unions' tags are no identifiers, so the param of an error names the field only ("input[0].content[1].type").
_PART_TAGS = {"input_text": "input-text", "output_text": "output-text"}


def _part_type(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return _PART_TAGS.get(kind, "not-text") if isinstance(kind, str) else "not-text"


ContentPart = Annotated[
    Annotated[InputText, Tag("input-text")]
    | Annotated[OutputText, Tag("output-text")]
    | Annotated[_NotText, Tag("not-text")],
    Discriminator(_part_type),
]


class InputMessage(_Body):
    """A message of the conversation (OpenAI's easy input message, input message or output message)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Annotated[list[ContentPart], Field(min_length=1)] | str
    id: ResponseId | None = None
    """The id of an item sent back; the stored item gets an id of its own."""
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, InputText | OutputText))


class FunctionCallItem(_Body):
    """A call the model made (an output item of an earlier response, sent back)."""

    type: Literal["function_call"]
    call_id: ToolCallId
    name: ToolName
    arguments: Annotated[str, Field(max_length=TOOL_ARGUMENTS)]
    id: ResponseId | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Body):
    """The result of a call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: ToolCallId
    output: Annotated[list[InputText], Field(min_length=1)] | str
    id: ResponseId | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(part.text for part in self.output)


class _OtherItem(BaseModel):
    """An input item of another kind (a built-in tool's call, a reference, reasoning): refused, named."""

    model_config = ConfigDict(extra="allow")

    type: Any

    @field_validator("type")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        raise ValueError(f"input items of type {str(value)[:64]!r} are not supported by this server")


_ITEM_TAGS = {"message": "message-item", "function_call": "call-item", "function_call_output": "call-output-item"}


def _item_type(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return _ITEM_TAGS.get(kind, "other-item") if isinstance(kind, str) else "other-item"


InputItem = Annotated[
    Annotated[InputMessage, Tag("message-item")]
    | Annotated[FunctionCallItem, Tag("call-item")]
    | Annotated[FunctionCallOutputItem, Tag("call-output-item")]
    | Annotated[_OtherItem, Tag("other-item")],
    Discriminator(_item_type),
]
Item = InputMessage | FunctionCallItem | FunctionCallOutputItem


class JsonSchemaFormat(_Body):
    type: Literal["json_schema"]
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class PlainFormat(_Body):
    type: Literal["text", "json_object"]


def _by_type(special: str, tag: str, otherwise: str) -> Discriminator:
    """A union's tag: ``tag`` for a value (a dict or a model) whose ``type`` is ``special``, else ``otherwise``."""

    def tag_of(value: Any) -> str:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return tag if kind == special else otherwise

    return Discriminator(tag_of)


TextFormat = Annotated[
    Annotated[PlainFormat, Tag("plain-format")] | Annotated[JsonSchemaFormat, Tag("schema-format")],
    _by_type("json_schema", "schema-format", "plain-format"),
]


class TextConfig(_Body):
    format: TextFormat | None = None
    verbosity: Annotated[Any, refused_unless("medium")] = None


class Reasoning(_Body):
    """Accepted only when it asks for nothing: the models served here do not reason apart from their answer."""

    effort: Refused = None
    summary: Refused = None
    generate_summary: Refused = None


class StreamOptions(_Body):
    include_obfuscation: bool | None = None


def _harmless_includes(value: list[str] | None) -> list[str] | None:
    for item in value or ():
        if item not in HARMLESS_INCLUDES:
            raise ValueError(f"{item!r} is not supported by this server")
    return value


class FunctionToolParam(_Body):
    """A function the model may call (the Responses API's flat shape)."""

    type: Literal["function"]
    name: ToolName
    description: Annotated[str, Field(max_length=TOOL_DESCRIPTION)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _BuiltinTool(BaseModel):
    """web_search, file_search, code_interpreter, computer_use, image_generation, mcp, ...: refused, named."""

    model_config = ConfigDict(extra="allow")

    type: Any

    @field_validator("type")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        raise ValueError(f"the built-in tool {str(value)[:64]!r} is not supported by this server: only function tools")


Tool = Annotated[
    Annotated[FunctionToolParam, Tag("function-tool")] | Annotated[_BuiltinTool, Tag("builtin-tool")],
    _by_type("function", "function-tool", "builtin-tool"),
]


class FunctionChoice(_Body):
    type: Literal["function"]
    name: ToolName


class ResponseCreateRequest(_Body):
    model: ModelId
    input: Annotated[list[InputItem], Field(min_length=1)] | str
    instructions: str | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=16, le=bounds.INT32_MAX)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    metadata: Metadata | None = None
    store: bool | None = None
    previous_response_id: ResponseId | None = None
    user: EndUser | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    parallel_tool_calls: bool | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: Annotated[list[str], AfterValidator(_harmless_includes)] | None = None
    reasoning: Reasoning | None = None
    background: Annotated[Any, refused_unless(False)] = None
    conversation: Refused = None
    prompt: Refused = None
    max_tool_calls: Refused = None
    top_logprobs: Annotated[Any, refused_unless(0)] = None
    service_tier: Annotated[Any, refused_unless("auto", "default")] = None
    # accepted and ignored: hints for OpenAI's prompt cache (ours is automatic) and its abuse monitoring id
    prompt_cache_key: Annotated[str, Field(max_length=bounds.USER)] | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    safety_identifier: EndUser | None = None

    @property
    def stored(self) -> bool:
        return self.store is not False

    @property
    def streamed(self) -> bool:
        return bool(self.stream)

    def input_items(self) -> list[Item]:
        if isinstance(self.input, str):
            return [InputMessage(role="user", content=self.input)]
        return [item for item in self.input if not isinstance(item, _OtherItem)]  # those were refused

    def function_tools(self) -> list[FunctionToolParam]:
        return [tool for tool in self.tools or () if isinstance(tool, FunctionToolParam)]  # others were refused

    def text_config(self) -> dict[str, Any]:
        """``text`` as the response echoes it."""
        chosen = self.text.format if self.text is not None and self.text.format is not None else None
        shown = chosen.model_dump(by_alias=True, exclude_none=True) if chosen else {"type": "text"}
        return {"format": shown, "verbosity": "medium"}
