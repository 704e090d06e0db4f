"""One response being made: the conversation it continues (its stored chain), its instructions and input,
rendered with the model's chat template and admitted as a chat request is (``admit_run``: the ledger bills the
whole rendered chain), the output's constraint from ``text.format``, and the response object it ends as.

``truncation: "auto"`` drops the oldest messages of the chain (never the request's own input) until the prompt
leaves room for the answer; ``"disabled"`` (the default) refuses a chain that does not fit with
``context_length_exceeded``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from engine.protocol import FinishReason, StructuredOutput
from gateway.errors import InvalidRequestError
from gateway.inference.api_types import ChatCompletionRequest, ChatMessage
from gateway.inference.catalog import ServedModel
from gateway.inference.generation import GenerationRun
from gateway.inference.prompts import chat_prompt, chat_turns
from gateway.inference.runs import RunRequest, Serving, admit_run
from gateway.inference.tools import NO_TOOLS
from gateway.responses.objects import (
    IncompleteDetails,
    InputItemOut,
    OutputMessage,
    OutputTextPart,
    ResponseErrorOut,
    ResponseObject,
    ResponseUsage,
    Status,
    message_item,
    new_id,
)
from gateway.responses.requests import JsonSchemaFormat, ResponseCreateRequest
from gateway.responses.store import NO_CHAIN, Chain, Message, ResponseStore


@dataclass
class Turn:
    body: ResponseCreateRequest
    tenant_id: str
    id: str
    created_at: int
    served: ServedModel
    chain: Chain
    items: list[InputItemOut]
    """The request's own input, as stored and listed."""
    run: GenerationRun

    def snapshot(
        self, status: Status, output: list[OutputMessage], *, error: ResponseErrorOut | None = None
    ) -> ResponseObject:
        """The response object as it stands (in progress, or finished with ``output``)."""
        body = self.body
        finished = status != "in_progress"
        usage = self.run.usage
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            model=self.served.id,
            output=output,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            previous_response_id=body.previous_response_id,
            store=body.stored,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            text=body.text_config(),
            tool_choice=body.tool_choice or "auto",
            tools=body.tools or [],
            truncation=body.truncation or "disabled",
            usage=ResponseUsage(
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
            )
            if finished
            else None,
            user=body.user,
            metadata=body.metadata or {},
        )

    def finished(self, message_id: str, text: str, finish_reason: FinishReason | None) -> ResponseObject:
        status: Status = "incomplete" if finish_reason == "length" else "completed"
        return self.snapshot(
            status, [answer(message_id, text, "incomplete" if status == "incomplete" else "completed")]
        )

    def remember(self, store: ResponseStore, response: ResponseObject) -> None:
        """Blocking: the finished response, if the request asked it kept."""
        if self.body.stored:
            store.save(self.tenant_id, response, self.items, self.chain.depth + 1)


def answer(message_id: str, text: str, status: str) -> OutputMessage:
    return OutputMessage(id=message_id, status=status, content=[OutputTextPart(text=text)])  # type: ignore[arg-type]


async def start_turn(body: ResponseCreateRequest, serving: Serving, store: ResponseStore) -> Turn:
    """Everything checked and admitted; the run not started yet."""
    if body.stream_options is not None and not body.streamed:
        raise InvalidRequestError("stream_options is only allowed when stream is true", param="stream_options")
    served = await serving.model(body.model)
    structured = await _constraint(body, serving)
    tenant_id = serving.tenant.tenant_id
    previous = body.previous_response_id
    chain = await run_in_threadpool(store.chain, tenant_id, previous) if previous else NO_CHAIN
    own = [Message(message.role, message.text()) for message in body.input_messages()]
    dropped = await _fitting(body, serving, served, chain, own)
    chat = _chat_request(body, [*chain.messages[dropped:], *own])
    prompt = await chat_prompt(chat_turns(chat.messages), NO_TOOLS, served.engine.tokenizer, serving.caps.prompts)
    run_request = RunRequest(
        body=chat,
        served=served,
        prompts=[prompt],
        requested_max_tokens=body.max_output_tokens,
        max_tokens_param="max_output_tokens",
        prompt_param="input",
        logprobs=None,
        structured=structured,
    )
    run = await admit_run(run_request, serving)
    items = [message_item(message.role, message.text) for message in own]
    return Turn(body, tenant_id, new_id("resp"), int(time.time()), served, chain, items, run)


def _chat_request(body: ResponseCreateRequest, messages: list[Message]) -> ChatCompletionRequest:
    instructions = [ChatMessage(role="system", content=body.instructions)] if body.instructions else []
    return ChatCompletionRequest(
        model=body.model,
        messages=[*instructions, *(ChatMessage(role=m.role, content=m.text) for m in messages)],  # type: ignore[arg-type]
        max_completion_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        user=body.user,
        stream=body.streamed,
    )


async def _fitting(
    body: ResponseCreateRequest, serving: Serving, served: ServedModel, chain: Chain, own: list[Message]
) -> int:
    """How many of the chain's oldest messages to leave out: none, unless ``truncation`` is ``"auto"`` and the whole
    conversation leaves no room for the answer (then the fewest that make room, found by bisection)."""
    if body.truncation != "auto" or not chain.messages:
        return 0
    room_for = body.max_output_tokens or 1
    limit = served.engine.max_model_len

    async def fits(dropped: int) -> bool:
        chat = _chat_request(body, [*chain.messages[dropped:], *own])
        try:
            prompt = await chat_prompt(
                chat_turns(chat.messages), NO_TOOLS, served.engine.tokenizer, serving.caps.prompts
            )
        except InvalidRequestError:  # too many characters to even tokenize
            return False
        return len(prompt) + room_for <= limit

    if await fits(0):
        return 0
    low, high = 1, len(chain.messages)  # the answer lies in [low, high]: dropping all of the chain is the last resort
    while low < high:
        middle = (low + high) // 2
        if await fits(middle):
            high = middle
        else:
            low = middle + 1
    return low


async def _constraint(body: ResponseCreateRequest, serving: Serving) -> StructuredOutput | None:
    chosen = body.text.format if body.text is not None else None
    if chosen is None or chosen.type == "text":
        return None
    if isinstance(chosen, JsonSchemaFormat):
        return await serving.structured.json_schema(chosen.schema_, "text.format.schema")
    return await serving.structured.constraint(StructuredOutput("json_object", ""), "text.format")
