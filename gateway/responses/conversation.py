"""A conversation of the Responses API as chat messages, so that it renders as a chat request does: messages keep
their role, the ``function_call`` items of a turn become the ``tool_calls`` of one assistant message, and each
``function_call_output`` a ``tool`` message answering its call. The request's own items are kept as stored input
items (ids of our own); the chain's items come back from the store in that shape."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.inference.api_types import ChatMessage
from gateway.inference.tool_types import FunctionCallMade, ToolCallMade
from gateway.responses.objects import (
    FunctionCallOut,
    FunctionCallOutputOut,
    InputItemOut,
    InputMessageItem,
    OutputMessage,
    message_item,
    new_id,
)
from gateway.responses.requests import FunctionCallItem, FunctionCallOutputItem, InputMessage, Item


def stored_item(item: Item) -> InputItemOut:
    """A request's input item as it is stored and listed."""
    if isinstance(item, InputMessage):
        return message_item(item.role, item.text())
    if isinstance(item, FunctionCallItem):
        return FunctionCallOut(
            id=new_id("fc"), call_id=item.call_id, name=item.name, arguments=item.arguments, status="completed"
        )
    assert isinstance(item, FunctionCallOutputItem)
    return FunctionCallOutputOut(id=new_id("fco"), call_id=item.call_id, output=item.text())


def chat_messages(items: Sequence[InputItemOut], instructions: str | None) -> list[ChatMessage]:
    """``instructions`` (a system message) first, then the items as chat messages."""
    messages = [ChatMessage(role="system", content=instructions)] if instructions else []
    for item in items:
        if isinstance(item, InputMessageItem | OutputMessage):
            text = "".join(part.text for part in item.content)
            messages.append(ChatMessage(role=item.role, content=text))
        elif isinstance(item, FunctionCallOut):
            call = ToolCallMade(
                id=item.call_id, type="function", function=FunctionCallMade(name=item.name, arguments=item.arguments)
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":  # the calls of one turn: one assistant message
                last.tool_calls = [*(last.tool_calls or ()), call]
            else:
                messages.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
        else:
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=item.output))
    return messages


def turn_starts(items: Sequence[InputItemOut]) -> list[int]:
    """Where the chain may be cut (``truncation: "auto"``) without parting a call from its result: before each
    user message."""
    return [index for index, item in enumerate(items) if isinstance(item, InputMessageItem) and item.role == "user"]
