"""``POST /v1/chat/completions``: messages rendered with the model's own chat template."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.edge.strict_json import StrictJSONRoute
from gateway.inference.api_types import ChatCompletionRequest
from gateway.inference.generation import GenerationRun
from gateway.inference.logprobs import chat_logprobs
from gateway.inference.prompts import chat_prompt
from gateway.inference.runs import RunRequest, admit_run, collect
from gateway.inference.schemas import ChatCompletion, openapi_responses
from gateway.inference.sse import EventStreamResponse, sse_frames
from gateway.state import RateLimitHeaders, ServingDep

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])


@router.post(
    "/v1/chat/completions", response_model=None, responses=openapi_responses(ChatCompletion, "chat.completion.chunk")
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    serving: ServingDep,
) -> JSONResponse | EventStreamResponse:
    body.check()
    served = await serving.model(body.model)
    prompt = await chat_prompt(body, served.engine.tokenizer, serving.caps.prompts)
    request_for = RunRequest(
        body=body,
        served=served,
        prompts=[prompt],
        requested_max_tokens=body.requested_max_tokens,
        max_tokens_param="max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
        prompt_param="messages",
        logprobs=body.logprobs_k,
    )
    run = await admit_run(request_for, serving)
    completion_id = f"chatcmpl-{serving.context.id.removeprefix('req_')}"
    header = {"id": completion_id, "created": int(time.time()), "model": served.id, "system_fingerprint": None}
    if body.stream:
        return EventStreamResponse(sse_frames(_chunks(run, header, body)), on_close=run.close)

    choices = await collect(request, run)
    return JSONResponse(
        {
            **header,
            "object": "chat.completion",
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": choice.text, "refusal": None},
                    "logprobs": chat_logprobs(choice.logprobs) if body.logprobs else None,
                    "finish_reason": choice.finish_reason,
                }
                for index, choice in enumerate(choices)
            ],
            "usage": run.usage.as_dict(),
        }
    )  # a response of our own making: FastAPI's encoder would only walk it again


async def _chunks(
    run: GenerationRun, header: dict[str, Any], body: ChatCompletionRequest
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
    async for index, delta in run.deltas():
        if delta.text or delta.logprobs or delta.finish_reason:
            yield chunk(
                [
                    {
                        "index": index,
                        "delta": {"content": delta.text} if delta.text else {},
                        "logprobs": chat_logprobs(delta.logprobs) if body.logprobs else None,
                        "finish_reason": delta.finish_reason,
                    }
                ]
            )
    if body.include_usage:
        yield {**header, "object": "chat.completion.chunk", "choices": [], "usage": run.usage.as_dict()}
