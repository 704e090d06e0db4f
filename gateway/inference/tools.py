"""Function tools, whatever the route (chat completions; the Responses API reuses it): the tools a client offers
and its choice (``ToolSpec``, ``ToolChoice``), the plan for one request (``plan_tools``), and the conversation's
earlier calls and their results as chat-template messages (``template_messages``, checked by ``check_history``).

How each choice runs (the output parsers are in ``gateway.inference.tool_output``):

- ``none``: the tools are not shown to the model and its output is plain text (earlier calls still render).
- ``auto``: the tools are rendered by the model's chat template where it renders tools, else into the system
  prompt in Hermes style (``fallback_system_text``); the output is parsed by the vLLM tool call parser the
  operator names (``LLMAAS_TOOL_CALL_PARSER``, for the model's own format), else for
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes format, also the fallback's).
- a named function: the output is constrained (structured decoding) to that function's arguments object.
- ``required``: the output is constrained to a JSON array of ``{"name", "arguments"}`` objects, one per call (one
  item at most when parallel calls are off), each item the ``anyOf`` of the tools' shapes.

Named and required choices always yield arguments that parse and validate against the tool's schema."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

from engine.protocol import StructuredOutput, Tokenizer
from gateway.errors import InvalidRequestError
from gateway.inference.structured import StructuredOutputs
from gateway.inference.tool_output import (
    NamedCall,
    OutputParser,
    ParsedCalls,
    PlainText,
    RequiredCalls,
    TaggedCalls,
    ToolCall,
)

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
"""A function without ``parameters`` takes an empty object."""


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call. ``param`` names its ``parameters`` in the request, for errors. ``strict``
    (the arguments must match ``parameters``) holds whenever the choice is enforced (named, ``required``); under
    ``auto`` the arguments are the JSON object the model wrote."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_PARAMETERS))
    strict: bool = False
    param: str = "tools"

    def as_openai(self) -> dict[str, Any]:
        """The tool as OpenAI's chat API (and chat templates) spell it."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        if self.strict:
            function["strict"] = True
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class NamedTool:
    name: str


ToolChoice = Literal["none", "auto", "required"] | NamedTool


@dataclass(frozen=True)
class ToolPlan:
    """What one request's tools change: the tools the template renders (``template_tools``) or the text added to
    the system prompt (``system_text``), the constraint on the output (``structured``), and its parser
    (``auto``'s by ``tool_call_parser``, where the operator names a vLLM parser)."""

    choice: ToolChoice
    names: tuple[str, ...]
    parallel: bool
    template_tools: list[dict[str, Any]] | None = None
    system_text: str | None = None
    structured: StructuredOutput | None = None
    tool_call_parser: Callable[[], ParsedCalls] | None = None

    def parser(self) -> OutputParser:
        """A fresh parser for one choice's output."""
        if isinstance(self.choice, NamedTool):
            return NamedCall(self.choice.name)
        if self.choice == "required":
            return RequiredCalls()
        if self.choice == "auto":
            if self.tool_call_parser is not None:
                return self.tool_call_parser()
            return TaggedCalls(frozenset(self.names), self.parallel)
        return PlainText()


NO_TOOLS = ToolPlan(choice="none", names=(), parallel=True)


async def plan_tools(
    specs: Sequence[ToolSpec],
    choice: ToolChoice | None,
    parallel: bool | None,
    structured: StructuredOutputs,
    param: str,
    *,
    tokenizer: Tokenizer,
    tool_call_parser: str = "",
    choice_param: str = "tool_choice",
) -> ToolPlan:
    """The plan for ``specs`` (``param`` names them) under ``choice`` (default: ``auto`` with tools, else
    ``none``) for the model of ``tokenizer`` (whether its chat template renders tools; what a vLLM parser named
    by ``tool_call_parser`` reads with). Every parameters schema is checked (a 400 naming it), and so is the
    constraint built from them."""
    if not specs:
        if choice not in (None, "none"):
            raise InvalidRequestError(
                f"'{choice_param}' is only allowed when '{param}' are specified.", param=choice_param
            )
        return NO_TOOLS
    names = [spec.name for spec in specs]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise InvalidRequestError(f"Tool names must be unique: '{duplicate}' is given twice.", param=param)
    for spec in specs:
        await structured.json_schema(spec.parameters, spec.param)
    choice = choice or "auto"
    plan = ToolPlan(choice=choice, names=tuple(names), parallel=parallel is not False)
    if choice == "none":
        return plan
    offered = [spec.as_openai() for spec in specs]
    if tokenizer.renders_tools:
        plan = replace(plan, template_tools=offered)
    else:
        plan = replace(plan, system_text=fallback_system_text(offered, plan.parallel))
    if isinstance(choice, NamedTool):
        chosen = next((spec for spec in specs if spec.name == choice.name), None)
        if chosen is None:
            raise InvalidRequestError(
                f"Tool choice '{choice.name}' is not among the tools given in '{param}'.", param=choice_param
            )
        return replace(plan, structured=await structured.json_schema(chosen.parameters, chosen.param))
    if choice == "required":
        schema = _calls_schema(specs, plan.parallel, param)
        return replace(plan, structured=await structured.json_schema(schema, param))
    if tool_call_parser:
        parse = partial(_parsed_calls, tool_call_parser, tokenizer, offered, frozenset(names), plan.parallel)
        return replace(plan, tool_call_parser=parse)
    return plan


def _parsed_calls(
    name: str, tokenizer: Tokenizer, offered: list[dict[str, Any]], names: frozenset[str], parallel: bool
) -> ParsedCalls:
    from engine.tool_parsing import ToolCallStream  # loads vLLM's parsers: only where the operator names one

    return ParsedCalls(ToolCallStream(name, tokenizer, offered), names, parallel)


def _calls_schema(specs: Sequence[ToolSpec], parallel: bool, param: str) -> dict[str, Any]:
    """A JSON array of calls, each ``{"name", "arguments"}`` of one of the tools (vLLM's own shape for
    ``required``); the tools' ``$defs`` lifted to the top, where their ``#/$defs/...`` references resolve."""
    defs: dict[str, Any] = {}
    shapes = []
    for spec in specs:
        parameters = dict(spec.parameters)
        own_defs = parameters.pop("$defs", {})
        if not isinstance(own_defs, dict):
            raise InvalidRequestError("'$defs' must be an object.", param=spec.param)
        for name, definition in own_defs.items():
            if defs.setdefault(name, definition) != definition:
                raise InvalidRequestError(
                    f"Two tools define '$defs/{name}' differently; a required tool choice needs them to agree.",
                    param=param,
                )
        shapes.append(
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [spec.name]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": shapes}}
    if not parallel:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def fallback_system_text(tools: list[dict[str, Any]], parallel: bool) -> str:
    """The tools in the system prompt, in the Hermes format, for a template that does not render tools."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    how_many = "one or more functions" if parallel else "at most one function"
    return (
        "# Tools\n\n"
        f"You may call {how_many} to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


@dataclass(frozen=True)
class Turn:
    """A message of the conversation, whatever the API that sent it: ``role`` is system, user, assistant or
    tool; an assistant's ``tool_calls``, a tool result's ``tool_call_id``."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


def check_history(turns: Sequence[Turn], param: str) -> None:
    """OpenAI's rules: a tool result answers a call of the assistant message just before it (results of the same
    message follow it in a row), and every call of an assistant message is answered before the conversation goes
    on."""
    waiting: dict[str, int] = {}  # call id -> index of the assistant message that made it
    for index, turn in enumerate(turns):
        if turn.role == "tool":
            if turn.tool_call_id not in waiting:
                raise InvalidRequestError(
                    f"Invalid parameter: the message with role 'tool' at {param}[{index}] must be a response to a "
                    "preceding message with 'tool_calls' (no call has the id it names).",
                    param=f"{param}[{index}].tool_call_id",
                )
            del waiting[turn.tool_call_id]
            continue
        _check_answered(waiting, param)
        waiting = {call.call_id: index for call in turn.tool_calls}
        if len(waiting) < len(turn.tool_calls):
            raise InvalidRequestError("Tool call ids must be unique.", param=f"{param}[{index}].tool_calls")
    _check_answered(waiting, param)


def _check_answered(waiting: dict[str, int], param: str) -> None:
    if waiting:
        index = next(iter(waiting.values()))
        raise InvalidRequestError(
            f"An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(waiting)}",
            param=f"{param}[{index}]",
        )


def template_messages(turns: Sequence[Turn], *, renders_tools: bool, system_text: str | None) -> list[dict[str, Any]]:
    """The conversation as the chat template takes it. A template that renders tools gets OpenAI's shape (an
    assistant's ``tool_calls`` with ``arguments`` as an object, ``tool`` messages with the call's id and name);
    any other gets the Hermes text: calls as ``<tool_call>`` blocks in the assistant's content, results as a user
    message of ``<tool_response>`` blocks. ``system_text`` (the fallback's tools) joins the system prompt."""
    names = {call.call_id: call.name for turn in turns for call in turn.tool_calls}
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if renders_tools:
            messages.append(_native(turn, names))
        elif turn.role == "tool":
            response = f"<tool_response>\n{turn.content}\n</tool_response>"
            last = messages[-1] if messages else None
            if last is not None and last.get("tool_responses"):
                last["content"] += "\n" + response
            else:
                messages.append({"role": "user", "content": response, "tool_responses": True})
        else:
            calls = [f"<tool_call>\n{_call_json(call)}\n</tool_call>" for call in turn.tool_calls]
            messages.append({"role": turn.role, "content": "\n".join(filter(None, [turn.content, *calls]))})
    for message in messages:
        message.pop("tool_responses", None)
    if system_text:
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{system_text}".lstrip()
        else:
            messages.insert(0, {"role": "system", "content": system_text})
    return messages


def _native(turn: Turn, names: dict[str, str]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call.arguments)},
            }
            for call in turn.tool_calls
        ]
    if turn.tool_call_id is not None:
        message["tool_call_id"] = turn.tool_call_id
        message["name"] = names.get(turn.tool_call_id, "")
    return message


def _call_json(call: ToolCall) -> str:
    return json.dumps({"name": call.name, "arguments": _arguments(call.arguments)}, ensure_ascii=False)


def _arguments(text: str) -> Any:
    """The arguments as an object where they parse as JSON (templates expect one), else the text as sent."""
    try:
        return json.loads(text)
    except ValueError:
        return text
