"""Prompts to token ids, refused cheaply first: the number of prompts and the characters they hold are checked
before anything is tokenized, and tokenizing (and chat-template rendering) of a large prompt runs in a worker
thread, so it never stalls the event loop that streams everyone else's tokens. A short one (most chat turns) is
tokenized in place: a thread hop costs more than the work."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from engine.protocol import Tokenizer
from gateway.errors import ContextLengthExceeded, InvalidRequestError
from gateway.inference.api_types import ChatMessage, PromptField
from gateway.inference.tool_output import ToolCall
from gateway.inference.tools import ToolPlan, Turn, template_messages

INLINE_CHARS = 2048
"""Prompts up to this many characters are tokenized on the event loop (well under a millisecond)."""
MESSAGE_OVERHEAD_CHARS = 16
T = TypeVar("T")
"""What each chat message adds to the character count besides its content (its share of the template)."""


@dataclass(frozen=True)
class PromptLimits:
    max_chars: int
    max_prompts: int


def _check_chars(chars: int, limits: PromptLimits, param: str) -> None:
    """Refused before tokenizing, so no token count is known: the message says what is (OpenAI's code and its
    "maximum context length" words, by which LangChain and litellm know to shorten the conversation)."""
    if chars > limits.max_chars:
        raise ContextLengthExceeded(
            f"This model's maximum context length is counted in tokens, and this server refuses a request of more "
            f"than {limits.max_chars} characters before counting them: your {param} came to {chars} characters. "
            f"Please reduce the length of the {param}.",
            param=param,
        )


def chat_turns(messages: Sequence[ChatMessage]) -> list[Turn]:
    """Chat messages as conversation turns ("developer" is the newer name for "system")."""
    return [
        Turn(
            role="system" if message.role == "developer" else message.role,
            content=message.text(),
            tool_calls=tuple(
                ToolCall(call.id, call.function.name, call.function.arguments) for call in message.tool_calls or ()
            ),
            tool_call_id=message.tool_call_id,
        )
        for message in messages
    ]


async def chat_prompt(turns: Sequence[Turn], plan: ToolPlan, tokenizer: Tokenizer, limits: PromptLimits) -> list[int]:
    """The conversation, with the tools of ``plan`` rendered, as the model's prompt tokens."""
    calls = [call for turn in turns for call in turn.tool_calls]
    chars = sum(len(turn.content) + MESSAGE_OVERHEAD_CHARS for turn in turns)
    chars += sum(len(call.name) + len(call.arguments) + MESSAGE_OVERHEAD_CHARS for call in calls)
    chars += len(plan.system_text or "") + (len(json.dumps(plan.template_tools)) if plan.template_tools else 0)
    _check_chars(chars, limits, "messages")
    renders_tools = tokenizer.renders_tools
    messages = template_messages(turns, renders_tools=renders_tools, system_text=plan.system_text)

    def render() -> list[int]:
        try:
            text = tokenizer.render_chat(messages, plan.template_tools)
        except Exception as exc:  # the model's Jinja template rejected the conversation
            raise InvalidRequestError(f"The messages could not be rendered: {exc}", param="messages") from exc
        return list(tokenizer.encode(text))

    return await _off_loop_if_long(render, chars)


async def completion_prompts(prompt: PromptField, tokenizer: Tokenizer, limits: PromptLimits) -> list[list[int]]:
    """A string, strings, token ids, or lists of token ids -> one token list per prompt."""
    items: list[Any] = [prompt] if isinstance(prompt, str) else list(prompt)
    if all(isinstance(item, str) for item in items):
        _check_count(len(items), limits)
        chars = sum(len(text) for text in items)
        _check_chars(chars, limits, "prompt")
        return await _off_loop_if_long(lambda: [list(tokenizer.encode(text)) for text in items], chars)
    token_lists: list[list[int]] = [items] if all(isinstance(item, int) for item in items) else items
    _check_count(len(token_lists), limits)

    def check_ids() -> list[list[int]]:
        vocab = tokenizer.vocab_size
        if any(not 0 <= token < vocab for ids in token_lists for token in ids):
            raise InvalidRequestError(f"prompt token ids must lie in [0, {vocab})", param="prompt")
        return token_lists

    return await run_in_threadpool(check_ids)


async def _off_loop_if_long(work: Callable[[], T], chars: int) -> T:
    return work() if chars <= INLINE_CHARS else await run_in_threadpool(work)


def _check_count(count: int, limits: PromptLimits) -> None:
    if count > limits.max_prompts:
        raise InvalidRequestError(
            f"This request holds {count} prompts; this server takes at most {limits.max_prompts} per request.",
            param="prompt",
            code="too_many_prompts",
        )
