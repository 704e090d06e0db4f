"""Runs one API request on the engine: context checks, sampling options, the merged stream of choice
deltas for one or several prompts, exact usage, what reached the client, and the outcome reported once when the
run ends (whose record is made durable before the run lets its caller finish the answer; a stream also makes
durable, before each batch of tokens goes out, what it would be charged if it were cut after them)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from engine.protocol import (
    AdapterRef,
    CompletionDelta,
    Engine,
    FinishReason,
    SamplingOptions,
    StructuredOutput,
    TokenLogprob,
)
from gateway.errors import ContextLengthExceeded
from gateway.inference.api_types import ChatCompletionRequest, CompletionRequest

logger = logging.getLogger(__name__)
Outcome = Literal["completed", "aborted", "failed"]
T = TypeVar("T")
# vLLM needs top_p > 0; OpenAI accepts 0 meaning "only the most likely token".
_MIN_TOP_P = 1e-6


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Of ``prompt_tokens``, those the engine read from its prefix cache (as the engine reports them)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, object]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }


@dataclass
class RunReport:
    """What a finished run tells its observers (metrics, metering)."""

    request_id: str
    model: str
    usage: Usage
    outcome: Outcome
    delivered_tokens: int
    """Completion tokens that reached the client: all of a completed run, those streamed of a stream that
    ended early, none of a non-streamed run that did not complete."""
    time_to_first_token: float | None
    duration: float


def fit_max_tokens(prompt_len: int, requested: int | None, max_model_len: int, prompt_param: str) -> int:
    """The number of tokens to generate, or ``ContextLengthExceeded`` when the prompt does not leave room."""
    room = max_model_len - prompt_len
    if requested is None and room > 0:
        return room
    if requested is not None and requested <= room:
        return requested
    asked = f"{prompt_len} in the prompt" + (f" + {requested} requested for the completion" if requested else "")
    raise ContextLengthExceeded(
        f"This model's maximum context length is {max_model_len} tokens, but you asked for {asked}. "
        "Shorten the prompt or lower max_tokens.",
        param=prompt_param if requested is None else "max_tokens",
    )


def sampling_options(
    body: ChatCompletionRequest | CompletionRequest,
    max_tokens: int,
    logprobs: int | None,
    structured: StructuredOutput | None = None,
) -> SamplingOptions:
    """The request's sampling fields, with the structured-output constraint the gateway checked (if any)."""
    top_p = 1.0 if body.top_p is None else max(body.top_p, _MIN_TOP_P)
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=top_p,
        n=body.n,
        stop=body.stop_sequences,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logprobs=logprobs,
        ignore_eos=body.ignore_eos,
        structured=structured,
    )


@dataclass
class ChoiceResult:
    """One choice, accumulated from its deltas (non-streaming responses)."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None


class GenerationRun:
    """The prompts of one request on the engine. Choice ``i * n + j`` is completion ``j`` of prompt ``i``."""

    def __init__(
        self,
        engine: Engine,
        model: str,
        prompts: list[list[int]],
        options: SamplingOptions,
        request_id: str,
        observers: Sequence[Callable[[RunReport], None]],
        adapter: AdapterRef | None = None,
        *,
        streaming: bool = False,
        durable: Callable[[], Awaitable[None]] | None = None,
        delivering: Callable[[int, int, int], Awaitable[None]] | None = None,
    ) -> None:
        self._engine = engine
        self._adapter = adapter
        self.model = model
        self.usage = Usage(prompt_tokens=sum(len(p) for p in prompts))
        if options.temperature == 0 and options.n > 1:
            # vLLM samples n > 1 only at temperature > 0; greedy choices are n runs of the same prompt,
            # which keeps choice index i * n + j (prefix caching shares the prompt's KV blocks).
            prompts = [prompt for prompt in prompts for _ in range(options.n)]
            options = replace(options, n=1)
        self._prompts = prompts
        self._options = options
        self._request_id = request_id
        self._observers = observers
        self._streaming = streaming
        self._durable = durable
        self._delivering = delivering if streaming else None
        self._streamed = 0  # completion tokens whose chunk was handed to the client
        self.has_output = False
        """The engine produced its first output (past that, a failure ends a stream with an error event)."""
        self._reported = False
        self._started = time.perf_counter()

    @property
    def num_choices(self) -> int:
        return len(self._prompts) * self._options.n

    async def deltas(self) -> AsyncIterator[tuple[int, CompletionDelta]]:
        """Every delta with its choice index. Closing this early aborts the engine requests. A run that completes
        or fails returns (or raises) only once its report's record is durable: its caller sends the answer's
        last bytes after that."""
        started = self._started = time.perf_counter()
        first_token: float | None = None
        outcome: Outcome = "aborted"
        try:
            async for prompt_index, engine_batch in self._engine_streams():
                self.has_output = True
                batch = self._count_cached(engine_batch)
                if self._delivering is not None:  # a stream: what a crash would bill, durable before it goes out
                    tokens = sum(len(delta.token_ids) for delta in batch)
                    if tokens:
                        usage = self.usage
                        await self._delivering(usage.prompt_tokens, self._streamed + tokens, usage.cached_tokens)
                for delta in batch:
                    if first_token is None and delta.token_ids:
                        first_token = time.perf_counter() - started
                    self.usage.completion_tokens += len(delta.token_ids)
                    yield prompt_index * self._options.n + delta.index, delta
                    self._streamed += len(delta.token_ids)  # asked for more: this one went out
            outcome = "completed"
        except Exception:
            outcome = "failed"
            raise
        finally:  # "aborted" also when the client left (CancelledError, GeneratorExit): nothing to wait for
            self._report(outcome, first_token)
            if _leaves_answer(outcome) and self._durable is not None:
                await self._durable()

    def _count_cached(self, batch: list[CompletionDelta]) -> list[CompletionDelta]:
        """Add the engine's cached prompt tokens to the usage; what is left of the batch to pass on (not a delta
        that only carried the count)."""
        passed = []
        for delta in batch:
            if delta.cached_tokens is not None:
                self.usage.cached_tokens = min(self.usage.cached_tokens + delta.cached_tokens, self.usage.prompt_tokens)
                if not (delta.text or delta.token_ids or delta.finish_reason or delta.logprobs):
                    continue
            passed.append(delta)
        return passed

    def close(self) -> None:
        """Report the run as abandoned if it never got to run (the client left before it started)."""
        self._report("aborted", None)

    def _report(self, outcome: Outcome, first_token: float | None) -> None:
        if self._reported:
            return
        self._reported = True
        duration = time.perf_counter() - self._started
        delivered = self._streamed if self._streaming or outcome == "completed" else 0  # a body goes out whole
        report = RunReport(self._request_id, self.model, self.usage, outcome, delivered, first_token, duration)
        for observer in self._observers:
            try:
                observer(report)
            except Exception:  # one observer's failure must not keep the others (the settlement) from the report
                logger.exception("an observer of run %s failed", self._request_id)

    async def collect(self) -> list[ChoiceResult]:
        results = [ChoiceResult() for _ in range(self.num_choices)]
        async for index, delta in self.deltas():
            result = results[index]
            result.text += delta.text
            result.logprobs.extend(delta.logprobs)
            result.finish_reason = delta.finish_reason or result.finish_reason
        return results

    def _engine_streams(self) -> AsyncIterator[tuple[int, list[CompletionDelta]]]:
        streams = [
            self._engine.generate(
                prompt, self._options, f"{self._request_id}-{i}", self._adapter, whole=not self._streaming
            )
            for i, prompt in enumerate(self._prompts)
        ]
        return merge_streams(streams)


def _leaves_answer(outcome: Outcome) -> bool:
    """Whether the caller goes on to finish an answer (whose record must be durable first): not for a client that
    left."""
    return outcome != "aborted"


async def merge_streams(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave several async iterators as items arrive; closing the merge cancels them all."""
    if len(streams) == 1:
        async for only in streams[0]:
            yield 0, only
        return
    queue: asyncio.Queue[tuple[int, T | None, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((index, item, None))
            queue.put_nowait((index, None, None))
        except Exception as exc:
            queue.put_nowait((index, None, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is None:
                remaining -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
