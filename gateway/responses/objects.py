"""What ``/v1/responses`` answers, in OpenAI's shapes: the ``response`` object with its output items (a message,
function calls), the input items of a stored response, and the deletion. Built here, documented in
``/openapi.json`` by the same models."""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import BaseModel, Field

from adapters.pagination import CursorPage

Status = Literal["in_progress", "completed", "incomplete", "failed"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


def new_id(prefix: str) -> str:
    """``resp_`` / ``msg_`` / ``fc_`` + 32 random hex digits (nothing guessable, nothing that counts)."""
    return f"{prefix}_{secrets.token_hex(16)}"


class InputTextPart(BaseModel):
    type: Literal["input_text"] = "input_text"
    text: str


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class OutputMessage(BaseModel):
    """An answer of the model (``output`` of a response; an input item when it was sent back)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputTextPart]


class InputMessageItem(BaseModel):
    """A user, system or developer message of a response's input."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer"]
    status: ItemStatus = "completed"
    content: list[InputTextPart]


class FunctionCallOut(BaseModel):
    """A call of a function tool the model made (an output item; an input item when it was sent back)."""

    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


class FunctionCallOutputOut(BaseModel):
    """A call's result, as the client sent it in."""

    id: str
    type: Literal["function_call_output"] = "function_call_output"
    call_id: str
    output: str
    status: ItemStatus = "completed"


OutputItem = OutputMessage | FunctionCallOut
InputItemOut = InputMessageItem | OutputMessage | FunctionCallOut | FunctionCallOutputOut


def message_item(role: str, text: str) -> InputItemOut:
    """One message as a stored item: an assistant's as output text, any other as input text."""
    if role == "assistant":
        return OutputMessage(id=new_id("msg"), status="completed", content=[OutputTextPart(text=text)])
    return InputMessageItem(id=new_id("msg"), role=role, content=[InputTextPart(text=text)])  # type: ignore[arg-type]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseErrorOut(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ReasoningOut(BaseModel):
    effort: None = None
    summary: None = None


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    completed_at: int | None = None
    error: ResponseErrorOut | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: ReasoningOut = Field(default_factory=ReasoningOut)
    store: bool
    temperature: float
    top_p: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    truncation: Literal["auto", "disabled"]
    usage: ResponseUsage | None = None
    user: str | None
    metadata: dict[str, str]
    background: bool = False
    service_tier: Literal["default"] = "default"

    def output_text(self) -> str:
        return "".join(part.text for item in self.output if isinstance(item, OutputMessage) for part in item.content)


class InputItemList(CursorPage[InputItemOut, str]):
    """A stored response's input items, paged by ``after`` / ``limit`` in ``order``."""


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True
