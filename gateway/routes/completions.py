"""``POST /v1/completions``: raw prompts (a string, strings, token ids, or lists of token ids)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from engine.protocol import Tokenizer
from gateway.api_types import CompletionRequest, PromptField
from gateway.deps import CatalogDep, MetricsDep, RequestIdDep
from gateway.errors import InvalidRequestError
from gateway.generation import GenerationRun
from gateway.logprobs import completion_logprobs
from gateway.quota import QuotaDep
from gateway.serving import admit_run, collect
from gateway.sse import EventStreamResponse, sse_frames

router = APIRouter()


def _tokenize_prompts(prompt: PromptField, tokenizer: Tokenizer) -> list[list[int]]:
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if all(isinstance(item, int) for item in prompt):
        token_lists: list[list[int]] = [list(prompt)]
    elif all(isinstance(item, str) for item in prompt):
        return [tokenizer.encode(item) for item in prompt]
    else:
        token_lists = [list(item) for item in prompt]
    for ids in token_lists:
        if any(not 0 <= token < tokenizer.vocab_size for token in ids):
            raise InvalidRequestError(f"prompt token ids must lie in [0, {tokenizer.vocab_size})", param="prompt")
    return token_lists


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    catalog: CatalogDep,
    metrics: MetricsDep,
    request_id: RequestIdDep,
    quota: QuotaDep,
) -> dict[str, Any] | EventStreamResponse:
    body.check()
    served = await catalog.resolve(body.model, quota.principal.tenant_id)
    quota.principal.check_model(served.id)
    tokenizer = served.engine.tokenizer
    prompts = _tokenize_prompts(body.prompt, tokenizer)
    completion_id = f"cmpl-{request_id.removeprefix('req_')}"
    run = await admit_run(
        body=body,
        served=served,
        prompts=prompts,
        requested_max_tokens=body.max_tokens,
        max_tokens_param="max_tokens",
        prompt_param="prompt",
        logprobs=body.logprobs,
        quota=quota,
        metrics=metrics,
        run_id=completion_id,
    )
    echoes = [tokenizer.decode(ids) if body.echo else "" for ids in prompts for _ in range(body.n)]
    header = {
        "id": completion_id,
        "created": int(time.time()),
        "model": served.id,
        "system_fingerprint": None,
    }
    if body.stream:
        return EventStreamResponse(sse_frames(_chunks(run, header, body, echoes)), on_close=run.close)

    choices = await collect(request, run)
    return {
        **header,
        "object": "text_completion",
        "choices": [
            {
                "index": index,
                "text": echoes[index] + choice.text,
                "logprobs": completion_logprobs(choice.logprobs, 0) if body.logprobs is not None else None,
                "finish_reason": choice.finish_reason,
            }
            for index, choice in enumerate(choices)
        ],
        "usage": run.usage.as_dict(),
    }


async def _chunks(
    run: GenerationRun, header: dict[str, Any], body: CompletionRequest, echoes: list[str]
) -> AsyncIterator[dict[str, Any]]:
    usage_field = {"usage": None} if body.include_usage else {}

    def chunk(index: int, text: str, logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        return {**header, "object": "text_completion", "choices": [choice], **usage_field}

    for index, echo in enumerate(echoes):
        if echo:
            yield chunk(index, echo, None, None)
    offsets = [0] * run.num_choices
    async for index, delta in run.deltas():
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(delta.logprobs, offsets[index])
        offsets[index] += len(delta.text)
        yield chunk(index, delta.text, logprobs, delta.finish_reason)
    if body.include_usage:
        yield {**header, "object": "text_completion", "choices": [], "usage": run.usage.as_dict()}
