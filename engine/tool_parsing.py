"""vLLM's tool-call parsers (``vllm.tool_parsers``, what ``vllm serve --tool-call-parser`` names) behind a plain
interface: the ``auto`` tool choice's output, when the operator names one (``LLMAAS_TOOL_CALL_PARSER``), goes
through it, in this process, whatever serves the model (in process or upstream vLLM servers).

``check_tool_call_parser`` refuses a name vLLM does not know (at start-up, from the settings);
``ToolCallStream`` parses one completion's text as it comes (``feed``) and at its end (``finish``) into
``ParsedDelta`` values: content and pieces of calls. It drives vLLM's own parser (``ParserManager``'s composition,
no reasoning parser) exactly as vLLM's chat serving does when streaming; a whole output is one delta.

Token ids: the parsers that read them get the delta's text encoded again (the engine's deltas are text without
special tokens, so a parser whose markers are special tokens does not see them either way)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest, ChatCompletionToolsParam
from vllm.parser.abstract_parser import Parser
from vllm.parser.parser_manager import ParserManager
from vllm.tool_parsers import ToolParserManager
from vllm.tool_parsers.abstract_tool_parser import Tool

from engine.protocol import Tokenizer
from engine.tokenizer import HFTokenizer


def check_tool_call_parser(name: str) -> str:
    """``name`` if vLLM has a tool-call parser by that name (and it loads), else a ``ValueError`` listing them."""
    known = ToolParserManager.list_registered()
    if name not in known:
        raise ValueError(f"vLLM has no tool call parser named {name!r}; its parsers: {', '.join(known)}")
    _parser_class(name)
    return name


@cache
def _parser_class(name: str) -> type[Parser]:
    parser_class = ParserManager.get_parser(tool_parser_name=name, enable_auto_tools=True)
    if parser_class is None:  # only without a name
        raise ValueError(f"no tool call parser named {name!r}")
    return parser_class


@dataclass(frozen=True)
class CallDelta:
    """A piece of call ``index`` (numbered by the parser, from 0): its function's ``name`` on its first piece,
    then pieces of its ``arguments`` (JSON text)."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class ParsedDelta:
    content: str = ""
    calls: tuple[CallDelta, ...] = ()


class ToolCallStream:
    """One completion of a request that offered ``tools`` (OpenAI function tools), through the parser ``name``
    (checked by ``check_tool_call_parser``) with the model's ``tokenizer``."""

    def __init__(self, name: str, tokenizer: Tokenizer, tools: Sequence[Mapping[str, Any]]) -> None:
        if not isinstance(tokenizer, HFTokenizer):
            raise TypeError("vLLM's tool call parsers need the model's Hugging Face tokenizer")
        self._tokenizer = tokenizer
        offered: list[Tool] = [ChatCompletionToolsParam.model_validate(tool) for tool in tools]
        self._request = ChatCompletionRequest.model_validate({"messages": [], "tools": offered, "tool_choice": "auto"})
        self._parser = _parser_class(name)(tokenizer.hf, offered)
        self._started = False

    def feed(self, text: str) -> ParsedDelta:
        return self._parse(text, finished=False)

    def finish(self) -> ParsedDelta:
        return self._parse("", finished=True)

    def _parse(self, text: str, *, finished: bool) -> ParsedDelta:
        # The prompt's ids only tell a reasoning parser whether reasoning ended in the prompt; there is none, so
        # an empty prompt (given once) starts the tool phase.
        prompt: list[int] | None = None if self._started else []
        self._started = True
        token_ids = self._tokenizer.encode(text) if text else []
        message = self._parser.parse_delta(text, token_ids, self._request, prompt, finished=finished)
        return _parsed(message)


def _parsed(message: DeltaMessage | None) -> ParsedDelta:
    if message is None:
        return ParsedDelta()
    calls = tuple(
        CallDelta(call.index, call.function.name, call.function.arguments or "")
        if call.function
        else CallDelta(call.index)
        for call in message.tool_calls or ()
    )
    return ParsedDelta(message.content or "", calls)
