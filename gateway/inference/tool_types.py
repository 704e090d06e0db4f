"""Tools in request bodies: function tools, a named tool choice, and the calls an assistant message of the history
made (as we answered them), with OpenAI's bounds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from gateway import bounds
from gateway.inference.request_fields import StrictRequest

ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]
ToolCallId = Annotated[str, Field(min_length=1, max_length=bounds.USER)]
MAX_TOOLS = 128
"""OpenAI's cap on the tools of one request."""
TOOL_DESCRIPTION = 8192
TOOL_ARGUMENTS = 64 * 1024
"""The arguments (JSON text) of a tool call sent back in the history."""
LEGACY_FUNCTIONS = "is the deprecated function-calling interface, not supported by this server: use tools"


class FunctionDefinition(StrictRequest):
    name: ToolName
    description: Annotated[str, Field(max_length=TOOL_DESCRIPTION)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(StrictRequest):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(StrictRequest):
    name: ToolName


class NamedToolChoice(StrictRequest):
    type: Literal["function"]
    function: FunctionName


class FunctionCallMade(StrictRequest):
    name: ToolName
    arguments: Annotated[str, Field(max_length=TOOL_ARGUMENTS)]


class ToolCallMade(StrictRequest):
    """A call an assistant message of the history made (as we answered it)."""

    id: ToolCallId
    type: Literal["function"]
    function: FunctionCallMade
