"""What chat and completions share between parsing and shaping the response: the per-request caps, the
max-tokens policy, admission (the quota reservation, then a place in the engine's queue: ``gateway.scheduling``),
and running the prompts on the engine (a whole reply, or a stream that starts once the engine produced its first
output)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from fastapi import Request

from engine.protocol import StructuredOutput
from gateway.accounting.admission import Admission, InferenceReservation
from gateway.context import RequestContext
from gateway.errors import InvalidRequestError
from gateway.inference.aliases import Alias
from gateway.inference.api_types import ChatCompletionRequest, CompletionRequest
from gateway.inference.catalog import ModelCatalog, ServedModel
from gateway.inference.generation import ChoiceResult, GenerationRun, RunReport, fit_max_tokens, sampling_options
from gateway.inference.prompts import PromptLimits
from gateway.inference.sse import EventStreamResponse, aclose, sse_frames
from gateway.inference.structured import StructuredOutputs
from gateway.ops.metrics import Metrics
from gateway.scheduling import PriorityClass, class_rank
from gateway.scheduling.slots import Scheduler, SlotDemand, Ticket
from gateway.settings import GatewaySettings
from gateway.tenancy.principal import TenantPrincipal

T = TypeVar("T")


@dataclass(frozen=True)
class RequestCaps:
    """What one request may ask of the engine (``LLMAAS_MAX_*`` settings), checked before admission."""

    prompts: PromptLimits
    max_choices: int
    max_generated_tokens: int

    @classmethod
    def from_settings(cls, settings: GatewaySettings, max_model_len: int) -> RequestCaps:
        max_chars = settings.max_prompt_chars or 16 * max_model_len
        return cls(
            prompts=PromptLimits(max_chars=max_chars, max_prompts=settings.max_prompts_per_request),
            max_choices=settings.max_choices_per_request,
            max_generated_tokens=settings.max_generated_tokens_per_request,
        )


@dataclass(frozen=True)
class Serving:
    """What a generation route works with (one request's worth, from ``gateway.state.ServingDep``)."""

    context: RequestContext
    tenant: TenantPrincipal
    catalog: ModelCatalog
    admission: Admission
    caps: RequestCaps
    metrics: Metrics
    structured: StructuredOutputs
    scheduler: Scheduler
    tool_call_parser: str = ""
    """The vLLM tool call parser that reads ``auto``'s calls (``LLMAAS_TOOL_CALL_PARSER``); empty: our own."""
    client_gone: Callable[[], Awaitable[None]] | None = None
    """Returns when the client disconnects (an HTTP request); None: no client to watch (an eval run)."""

    async def model(self, model_id: str) -> ServedModel:
        """The model the request names, if the tenant has it and its key may use it; for the tenant's alias, the
        model it picks for this request (the answer and the ledger name that one)."""
        served = await self.catalog.resolve(
            model_id, self.tenant.tenant_id, lambda alias: check_access(self.tenant, alias.name, alias)
        )
        check_access(self.tenant, served.id, served.alias)
        return served


def check_access(tenant: TenantPrincipal, model_id: str, alias: Alias | None) -> None:
    """The key may use the model a request resolved to: by its own name, or by the alias the request named."""
    if alias is None:
        tenant.check_model(model_id)
    else:
        tenant.check_model(alias.name, alias.models)


@dataclass(frozen=True)
class RunRequest:
    body: ChatCompletionRequest | CompletionRequest
    served: ServedModel
    prompts: list[list[int]]
    requested_max_tokens: int | None
    max_tokens_param: str
    prompt_param: str
    logprobs: int | None
    kind: str = "inference"
    """The ledger's kind for its usage ("eval" for the samples of eval runs)."""
    structured: StructuredOutput | None = None
    """What the output must match (a tool choice's constraint)."""
    priority_class: PriorityClass | None = None
    """The class it waits in when the engine is saturated; None: its key's class (the Batch API says ``batch``)."""


def _max_tokens(run: RunRequest, tenant: TenantPrincipal, caps: RequestCaps) -> int:
    """Tokens to generate per choice: what was asked, within the context window, the tenant's cap and the
    request's share of ``max_generated_tokens``; an open-ended request gets what is left of all three."""
    choices = len(run.prompts) * run.body.n
    if choices > caps.max_choices:
        raise InvalidRequestError(
            f"This request asks for {choices} choices (prompts x n); this server allows {caps.max_choices}.",
            param="n",
            code="too_many_choices",
        )
    requested = run.requested_max_tokens
    tenant_cap = tenant.identity.quotas.max_tokens_cap
    if tenant_cap is not None and requested is not None and requested > tenant_cap:
        raise InvalidRequestError(
            f"{run.max_tokens_param} is {requested}, above this organization's cap of {tenant_cap}.",
            param=run.max_tokens_param,
            code="max_tokens_above_cap",
        )
    if requested is not None and requested * choices > caps.max_generated_tokens:
        raise InvalidRequestError(
            f"This request may generate {requested * choices} tokens ({run.max_tokens_param} x {choices} choices); "
            f"this server allows {caps.max_generated_tokens} per request.",
            param=run.max_tokens_param,
            code="too_many_tokens_requested",
        )
    longest = max(len(prompt) for prompt in run.prompts)
    max_tokens = fit_max_tokens(longest, requested, run.served.engine.max_model_len, run.prompt_param)
    ceilings = [max_tokens, max(caps.max_generated_tokens // choices, 1)]
    if tenant_cap is not None:
        ceilings.append(tenant_cap)
    return min(ceilings)


async def admit_run(run: RunRequest, serving: Serving) -> GenerationRun:
    """Check the request against the caps, the context window and the tenant's quotas, reserve its tokens, and
    return the run (not started yet). The reservation settles when the run reports its end."""
    max_tokens = _max_tokens(run, serving.tenant, serving.caps)
    requested = await serving.structured.requested(run.body.constraint())  # checked even where a tool call wins
    # A tool choice that must be answered (required, or a named function) is enforced by its own constraint.
    structured = run.structured or requested
    priority_class = run.priority_class or serving.tenant.identity.priority_class
    options = replace(
        sampling_options(run.body, max_tokens, run.logprobs, structured),
        priority=class_rank(priority_class),
        cache_salt=serving.tenant.tenant_id,  # one tenant's prompts never hit another's cached blocks
    )
    reservation = await serving.admission.admit_inference(
        serving.context,
        serving.tenant,
        run.served.id,
        prompts=len(run.prompts),
        prompt_tokens=sum(len(prompt) for prompt in run.prompts),
        max_completion_tokens=max_tokens * run.body.n * len(run.prompts),
        end_user=run.body.user,
        kind=run.kind,
    )

    def settle(report: RunReport) -> None:
        usage = report.usage
        reservation.settle(usage.prompt_tokens, report.delivered_tokens, report.outcome, usage.cached_tokens)

    def observe(report: RunReport) -> None:
        serving.metrics.observe_run(
            model=run.served.base,
            fine_tuned=run.served.adapter is not None,
            outcome=report.outcome,
            prompt_tokens=report.usage.prompt_tokens,
            completion_tokens=report.usage.completion_tokens,
            time_to_first_token=report.time_to_first_token,
        )

    sequences = len(run.prompts) * run.body.n
    ticket = await wait_for_engine(serving, run.served.base, sequences, reservation, priority_class)
    served = run.served
    observers = [settle, lambda _: ticket.release(), observe]  # the settlement first: never after the metrics
    return GenerationRun(
        served.engine,
        served.id,
        run.prompts,
        options,
        serving.context.id,
        observers,
        served.adapter,
        streaming=bool(run.body.stream),
        durable=reservation.durable,
        delivering=reservation.delivering,
    )


async def wait_for_engine(
    serving: Serving,
    model: str,
    sequences: int,
    reservation: InferenceReservation,
    priority_class: PriorityClass | None = None,
) -> Ticket:
    """A place among what runs on ``model``'s engine (its base model), in the queue's order, for ``sequences``
    sequences in ``priority_class`` (None: the key's). A request refused or left while it waits gives its
    reservation back (it never ran: nothing is charged)."""
    tenant = serving.tenant.identity
    demand = SlotDemand(
        request_id=serving.context.id,
        tenant_id=tenant.tenant_id,
        priority_class=priority_class or tenant.priority_class,
        weight=tenant.scheduling_weight,
        sequences=sequences,
    )
    waiting = serving.scheduler.acquire(model, demand)
    try:
        if serving.client_gone is None:
            return await waiting
        return await unless_gone(serving.client_gone, waiting)
    except BaseException:
        reservation.withdraw()
        raise


async def collect(request: Request, run: GenerationRun) -> list[ChoiceResult]:
    """The whole run for a non-streaming reply; aborted if the client leaves first."""
    try:
        return await unless_disconnected(request, run.collect())
    finally:
        run.close()


async def collected(run: GenerationRun) -> list[ChoiceResult]:
    """The whole run where no client waits on the connection (a batch's request)."""
    try:
        return await run.collect()
    finally:
        run.close()


async def stream(request: Request, run: GenerationRun, chunks: AsyncIterator[dict[str, Any]]) -> EventStreamResponse:
    """A streaming reply of ``chunks``, started once the engine produced its first output: a run that no engine
    could take (every replica failed before its first token) is refused with its status (a 503 with
    ``retry-after``, which the SDKs retry) rather than with an error event after a 200; aborted if the client
    leaves first."""
    first: list[dict[str, Any]] = []

    async def until_output() -> None:
        async for chunk in chunks:
            first.append(chunk)
            if run.has_output:
                return

    try:
        await unless_disconnected(request, until_output())
    except BaseException:
        await aclose(chunks)
        run.close()
        raise
    return EventStreamResponse(sse_frames(_resumed(first, chunks)), on_close=run.close)


async def _resumed(first: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    try:
        for chunk in first:
            yield chunk
        async for chunk in rest:
            yield chunk
    finally:
        await aclose(rest)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (which aborts engine requests) and raise
    ``asyncio.CancelledError``."""
    return await unless_gone(disconnect_of(request), work)


def disconnect_of(request: Request) -> Callable[[], Awaitable[None]]:
    """What returns when the client of ``request`` disconnects."""

    async def gone() -> None:
        await _wait_for_disconnect(request)

    return gone


async def unless_gone(gone: Callable[[], Awaitable[object]], work: Awaitable[T]) -> T:
    """Await ``work``; if ``gone`` returns first (the client left), cancel it and raise ``asyncio.CancelledError``.
    One watcher task beside the request's own, which cancels it when the client leaves."""
    request_task = asyncio.current_task()
    assert request_task is not None
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        await gone()
        disconnected = True
        request_task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected:
            raise asyncio.CancelledError("client disconnected") from None
        raise
    finally:
        watcher.cancel()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
