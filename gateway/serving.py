"""What chat and completions share between parsing and shaping the response: the max-tokens policy,
admission (quota reservation), and running the prompts on the engine."""

from __future__ import annotations

from fastapi import Request

from gateway.api_types import ChatCompletionRequest, CompletionRequest
from gateway.catalog import ServedModel
from gateway.deps import unless_disconnected
from gateway.generation import ChoiceResult, GenerationRun, fit_max_tokens, sampling_options
from gateway.metrics import Metrics
from gateway.quota import QuotaGate


async def admit_run(
    *,
    body: ChatCompletionRequest | CompletionRequest,
    served: ServedModel,
    prompts: list[list[int]],
    requested_max_tokens: int | None,
    max_tokens_param: str,
    prompt_param: str,
    logprobs: int | None,
    quota: QuotaGate,
    metrics: Metrics,
    run_id: str,
) -> GenerationRun:
    """Check the request against the context window and the tenant's quotas, reserve its tokens, and
    return the run (not started yet). The reservation settles when the run reports its end."""
    quota.check_max_tokens(requested_max_tokens, max_tokens_param)
    longest = max(len(prompt) for prompt in prompts)
    max_tokens = fit_max_tokens(longest, requested_max_tokens, served.engine.max_model_len, prompt_param)
    max_tokens = quota.capped(max_tokens)
    options = sampling_options(body, max_tokens, logprobs)
    reservation = await quota.admit(
        served.id,
        run_id,
        prompt_tokens=sum(len(prompt) for prompt in prompts),
        max_completion_tokens=max_tokens * body.n * len(prompts),
        end_user=body.user,
    )
    observers = [metrics.observe_run, reservation.settle]
    return GenerationRun(served.engine, served.id, prompts, options, run_id, observers, adapter=served.adapter)


async def collect(request: Request, run: GenerationRun) -> list[ChoiceResult]:
    """The whole run for a non-streaming reply; aborted if the client leaves first."""
    try:
        return await unless_disconnected(request, run.collect())
    finally:
        run.close()
