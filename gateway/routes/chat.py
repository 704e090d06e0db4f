"""``POST /v1/chat/completions``: messages rendered with the model's own chat template, and function tools
(``gateway.inference.tools``): the output of each choice goes through its tool parser, whose events become
``content`` and ``tool_calls`` deltas (streamed) or the message (not streamed). With ``store: true`` the request
and its completion are kept (``gateway.stored_completions``): checked before the model runs, stored once the
answer is whole (a stream once its last chunk went out; a stream the client cut, or that failed, stores nothing).
``batch_answer`` answers one request of a batch the same way (``gateway.batches``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from engine.protocol import Tokenizer
from gateway.edge.strict_json import StrictJSONRoute
from gateway.inference.api_types import ChatCompletionRequest
from gateway.inference.generation import ChoiceResult, GenerationRun
from gateway.inference.logprobs import chat_logprobs
from gateway.inference.prompts import chat_prompt, chat_turns
from gateway.inference.runs import RunRequest, Serving, admit_run, collect, collected, stream
from gateway.inference.schemas import ChatCompletion, openapi_responses
from gateway.inference.sse import EventStreamResponse, aclose
from gateway.inference.tool_output import Event, OutputParser, TextDelta, ToolCall, ToolCallStarted
from gateway.inference.tool_types import NamedToolChoice
from gateway.inference.tools import NamedTool, ToolPlan, ToolSpec, check_history, plan_tools
from gateway.state import CompletionsDep, RateLimitHeaders, ServingDep
from gateway.stored_completions.assembly import Assembly
from gateway.stored_completions.store import CompletionStore, kept_request

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])


@router.post(
    "/v1/chat/completions", response_model=None, responses=openapi_responses(ChatCompletion, "chat.completion.chunk")
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    serving: ServingDep,
    stored: CompletionsDep,
) -> JSONResponse | EventStreamResponse:
    if body.store:
        await run_in_threadpool(stored.admit, serving.tenant, body)
    run, header, plan = await _start(body, serving)
    if body.stream:
        chunks = _chunks(run, header, body, plan)
        return await stream(request, run, _kept(chunks, run, body, serving, stored) if body.store else chunks)
    completion = _completion(header, body, plan, run, await collect(request, run))
    if body.store:
        await run_in_threadpool(stored.save, serving.tenant.tenant_id, kept_request(body), completion, body.metadata)
    # A response of our own making: FastAPI's encoder would only walk it again.
    return JSONResponse(completion)


async def _kept(
    chunks: AsyncIterator[dict[str, Any]],
    run: GenerationRun,
    body: ChatCompletionRequest,
    serving: Serving,
    stored: CompletionStore,
) -> AsyncIterator[dict[str, Any]]:
    """``chunks`` as they go out; once the last one went, the completion they make is stored."""
    assembly = Assembly()
    try:
        async for chunk in chunks:
            if chunk["choices"]:
                assembly.add(chunk)
            yield chunk
    finally:
        await aclose(chunks)
    completion = assembly.completion(run.usage.as_dict())
    await run_in_threadpool(stored.save, serving.tenant.tenant_id, kept_request(body), completion, body.metadata)


async def batch_answer(body: ChatCompletionRequest, serving: Serving) -> dict[str, Any]:
    """One request of a batch: run as the routes run it, in the ``batch`` class and ledger kind."""
    run, header, plan = await _start(body, serving, kind="batch", priority_class="batch")
    return _completion(header, body, plan, run, await collected(run))


async def _start(
    body: ChatCompletionRequest, serving: Serving, **run_options: Any
) -> tuple[GenerationRun, dict[str, Any], ToolPlan]:
    """The request checked, rendered and admitted: its run (not started), the answer's header and its tools."""
    body.check()
    turns = chat_turns(body.messages)
    check_history(turns, "messages")
    served = await serving.model(body.model)
    plan = await _tool_plan(body, serving, served.engine.tokenizer)
    prompt = await chat_prompt(turns, plan, served.engine.tokenizer, serving.caps.prompts)
    request_for = RunRequest(
        body=body,
        served=served,
        prompts=[prompt],
        requested_max_tokens=body.requested_max_tokens,
        max_tokens_param="max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
        prompt_param="messages",
        logprobs=body.logprobs_k,
        structured=plan.structured,
        **run_options,
    )
    run = await admit_run(request_for, serving)
    completion_id = f"chatcmpl-{serving.context.id.removeprefix('req_')}"
    header = {"id": completion_id, "created": int(time.time()), "model": served.id, "system_fingerprint": None}
    return run, header, plan


def _completion(
    header: dict[str, Any], body: ChatCompletionRequest, plan: ToolPlan, run: GenerationRun, choices: list[ChoiceResult]
) -> dict[str, Any]:
    answers = []
    for index, choice in enumerate(choices):
        parser = plan.parser()
        events = parser.feed(choice.text) + parser.finish()
        answers.append(
            {
                "index": index,
                "message": _message(events, parser.calls),
                "logprobs": chat_logprobs(choice.logprobs) if body.logprobs else None,
                "finish_reason": _finish_reason(choice.finish_reason, parser),
            }
        )
    return {**header, "object": "chat.completion", "choices": answers, "usage": run.usage.as_dict()}


async def _tool_plan(body: ChatCompletionRequest, serving: Serving, tokenizer: Tokenizer) -> ToolPlan:
    specs = [
        ToolSpec(
            name=tool.function.name,
            description=tool.function.description,
            parameters=tool.function.parameters or {"type": "object", "properties": {}},
            strict=bool(tool.function.strict),
            param=f"tools[{index}].function.parameters",
        )
        for index, tool in enumerate(body.tools or ())
    ]
    choice = body.tool_choice
    named = NamedTool(choice.function.name) if isinstance(choice, NamedToolChoice) else choice
    return await plan_tools(
        specs,
        named,
        body.parallel_tool_calls,
        serving.structured,
        "tools",
        tokenizer=tokenizer,
        tool_call_parser=serving.tool_call_parser,
    )


def _message(events: list[Event], calls: list[ToolCall]) -> dict[str, Any]:
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    if calls:
        message["tool_calls"] = [
            {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls
        ]
    return message


def _finish_reason(engine_reason: str | None, parser: OutputParser) -> str | None:
    return "tool_calls" if engine_reason == "stop" and parser.calls and parser.finishes_with_calls else engine_reason


def _delta(event: Event) -> dict[str, Any]:
    """An event as a chunk's ``delta``, in OpenAI's shape: a call's first delta carries its index, id, type, name
    and empty arguments; later ones its index and a piece of the arguments."""
    if isinstance(event, TextDelta):
        return {"content": event.text}
    if isinstance(event, ToolCallStarted):
        call = {"name": event.name, "arguments": ""}
        return {"tool_calls": [{"index": event.call_index, "id": event.call_id, "type": "function", "function": call}]}
    return {"tool_calls": [{"index": event.call_index, "function": {"arguments": event.text}}]}


async def _chunks(
    run: GenerationRun, header: dict[str, Any], body: ChatCompletionRequest, plan: ToolPlan
) -> AsyncIterator[dict[str, Any]]:
    usage_field = {"usage": None} if body.include_usage else {}

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {**header, "object": "chat.completion.chunk", "choices": choices, **usage_field}

    yield chunk(
        [
            {
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            for i in range(run.num_choices)
        ]
    )
    parsers = [plan.parser() for _ in range(run.num_choices)]
    async for index, delta in run.deltas():
        parser = parsers[index]
        events = parser.feed(delta.text) + (parser.finish() if delta.finish_reason else [])
        deltas = [_delta(event) for event in events]
        finish_reason = _finish_reason(delta.finish_reason, parser)
        if finish_reason and (not deltas or "tool_calls" in deltas[-1]):
            deltas.append({})  # the last call's arguments, then the finish reason on its own, as OpenAI sends it
        elif not deltas and delta.logprobs:
            deltas.append({})
        for position, each in enumerate(deltas):
            first, last = position == 0, position == len(deltas) - 1
            yield chunk(
                [
                    {
                        "index": index,
                        "delta": each,
                        "logprobs": chat_logprobs(delta.logprobs) if body.logprobs and first else None,
                        "finish_reason": finish_reason if last else None,
                    }
                ]
            )
    if body.include_usage:
        yield {**header, "object": "chat.completion.chunk", "choices": [], "usage": run.usage.as_dict()}
