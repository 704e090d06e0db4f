"""``POST /v1/chat/completions``: messages rendered with the model's own chat template."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from gateway.api_types import ChatCompletionRequest
from gateway.deps import CatalogDep, MetricsDep, RequestIdDep
from gateway.errors import InvalidRequestError
from gateway.generation import GenerationRun
from gateway.logprobs import chat_logprobs
from gateway.quota import QuotaDep
from gateway.serving import admit_run, collect
from gateway.sse import EventStreamResponse, sse_frames

router = APIRouter()


def _render_prompt(body: ChatCompletionRequest, run_tokenizer: Any) -> list[int]:
    # Our template knows system/user/assistant; "developer" is the newer name for "system".
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        text = run_tokenizer.render_chat(messages)
    except Exception as exc:  # the model's Jinja template rejected the conversation
        raise InvalidRequestError(f"The messages could not be rendered: {exc}", param="messages") from exc
    return list(run_tokenizer.encode(text))


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    catalog: CatalogDep,
    metrics: MetricsDep,
    request_id: RequestIdDep,
    quota: QuotaDep,
) -> dict[str, Any] | EventStreamResponse:
    body.check()
    served = await catalog.resolve(body.model, quota.principal.tenant_id)
    quota.principal.check_model(served.id)
    completion_id = f"chatcmpl-{request_id.removeprefix('req_')}"
    run = await admit_run(
        body=body,
        served=served,
        prompts=[_render_prompt(body, served.engine.tokenizer)],
        requested_max_tokens=body.requested_max_tokens,
        max_tokens_param="max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
        prompt_param="messages",
        logprobs=body.logprobs_k,
        quota=quota,
        metrics=metrics,
        run_id=completion_id,
    )
    header = {"id": completion_id, "created": int(time.time()), "model": served.id, "system_fingerprint": None}
    if body.stream:
        return EventStreamResponse(sse_frames(_chunks(run, header, body)), on_close=run.close)

    choices = await collect(request, run)
    return {
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
