"""``POST /v1/completions``: raw prompts (a string, strings, token ids, or lists of token ids). ``batch_answer``
answers one request of a batch the same way (``gateway.batches``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from gateway.edge.strict_json import StrictJSONRoute
from gateway.inference.api_types import CompletionRequest
from gateway.inference.generation import ChoiceResult, GenerationRun
from gateway.inference.logprobs import completion_logprobs
from gateway.inference.prompts import completion_prompts
from gateway.inference.runs import RunRequest, Serving, admit_run, collect, collected, stream
from gateway.inference.schemas import TextCompletion, openapi_responses
from gateway.inference.sse import EventStreamResponse
from gateway.state import RateLimitHeaders, ServingDep

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])


@router.post("/v1/completions", response_model=None, responses=openapi_responses(TextCompletion, "text_completion"))
async def create_completion(
    body: CompletionRequest,
    request: Request,
    serving: ServingDep,
) -> JSONResponse | EventStreamResponse:
    run, header, echoes = await _start(body, serving)
    if body.stream:
        return await stream(request, run, _chunks(run, header, body, echoes))
    # A response of our own making: FastAPI's encoder would only walk it again.
    return JSONResponse(_completion(header, body, echoes, run, await collect(request, run)))


async def batch_answer(body: CompletionRequest, serving: Serving) -> dict[str, Any]:
    """One request of a batch: run as the route runs it, in the ``batch`` class and ledger kind."""
    run, header, echoes = await _start(body, serving, kind="batch", priority_class="batch")
    return _completion(header, body, echoes, run, await collected(run))


async def _start(
    body: CompletionRequest, serving: Serving, **run_options: Any
) -> tuple[GenerationRun, dict[str, Any], list[str]]:
    """The request checked, tokenized and admitted: its run (not started), the answer's header and the echoes."""
    body.check()
    served = await serving.model(body.model)
    tokenizer = served.engine.tokenizer
    prompts = await completion_prompts(body.prompt, tokenizer, serving.caps.prompts)
    request_for = RunRequest(
        body=body,
        served=served,
        prompts=prompts,
        requested_max_tokens=body.max_tokens,
        max_tokens_param="max_tokens",
        prompt_param="prompt",
        logprobs=body.logprobs,
        **run_options,
    )
    run = await admit_run(request_for, serving)
    try:
        texts = await run_in_threadpool(lambda: [tokenizer.decode(ids) for ids in prompts]) if body.echo else None
    except BaseException:
        run.close()  # the reservation is released: the run never started
        raise
    echoes = [text for text in texts for _ in range(body.n)] if texts else [""] * run.num_choices
    header = {
        "id": f"cmpl-{serving.context.id.removeprefix('req_')}",
        "created": int(time.time()),
        "model": served.id,
        "system_fingerprint": None,
    }
    return run, header, echoes


def _completion(
    header: dict[str, Any], body: CompletionRequest, echoes: list[str], run: GenerationRun, choices: list[ChoiceResult]
) -> dict[str, Any]:
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
