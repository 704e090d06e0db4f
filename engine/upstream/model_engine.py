"""One base model served by the pool, behind the per-model engine interface.

A request goes to the best replica for it (``UpstreamPool.ranked``), with its adapter loaded there first
(``UpstreamPool.attempt``). A replica's failure (connect error, reset, silence past the read timeout, 5xx,
overload, an error event, an answer that is not a completion stream) is retried on another replica, at most
``max_attempts`` replicas within the request's deadline, as long as nothing of the answer went out: before the
first delta of a stream, and at any point of a non-streamed answer (``whole``: each try's answer is kept
aside and only a complete one is yielded, so a failed try's tokens are neither shown nor counted). Once a delta
of a stream went out, a failure ends it. Only a replica's own trouble (unreachable, cut off, overloaded, garbage,
502-504) ejects it. The replica's own token ids are what the gateway counts, so the ledger holds the upstream's
counts. Closing the stream closes the connection, and vLLM aborts the request."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from engine.protocol import (
    AdapterRef,
    CompletionDelta,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    SamplingOptions,
    Tokenizer,
)
from engine.translate import chunk_deltas, completion_body
from engine.upstream.client import AdapterLoadFailed, ModelMissing, ReplicaFailed
from engine.upstream.replica import Replica
from engine.upstream.settings import UpstreamSettings

if TYPE_CHECKING:
    from engine.upstream.pool import UpstreamPool

logger = logging.getLogger(__name__)
PAST_DEADLINE = "The request ran past its deadline and was stopped."


class UpstreamEngine:
    def __init__(self, model: str, tokenizer: Tokenizer, pool: UpstreamPool, settings: UpstreamSettings) -> None:
        self.model = model
        self._tokenizer = tokenizer
        self._pool = pool
        self._settings = settings
        self._max_model_len = 0

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        """The shortest context among the replicas that serve it (while none does: the last one known)."""
        self._max_model_len = self._pool.context_length(self.model) or self._max_model_len
        return self._max_model_len

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
        *,
        whole: bool = False,
    ) -> AsyncIterator[list[CompletionDelta]]:
        deadline = time.monotonic() + self._settings.request_deadline_seconds
        body = completion_body(adapter.name if adapter else self.model, prompt_token_ids, options)
        tried: set[str] = set()
        last_failure: Exception | None = None
        for _ in range(self._settings.max_attempts):
            candidates = self._pool.ranked(
                self.model, adapter, exclude=tried, prompt=prompt_token_ids, salt=options.cache_salt
            )
            if not candidates:
                break
            replica = candidates[0]
            tried.add(replica.url)
            sent_any = False
            try:
                if whole:  # nothing goes out before the answer is complete: a failed try is dropped whole
                    answer = [
                        delta
                        async for deltas in self._on(replica, body, options, adapter, deadline)
                        for delta in deltas
                    ]
                else:
                    async for deltas in self._on(replica, body, options, adapter, deadline):
                        sent_any = True
                        yield deltas
                    return
            except ReplicaFailed as exc:
                if sent_any:
                    logger.warning("upstream %s failed mid-answer: %s", replica.url, exc)
                    raise EngineError("The model server failed in the middle of the answer.") from exc
                logger.warning("upstream %s failed before the answer went out, trying another: %s", replica.url, exc)
                self._pool.note_failure(replica, exc, adapter)
                if isinstance(exc, ModelMissing) and adapter is not None:
                    tried.discard(replica.url)  # it may take the request once the adapter is loaded again
                last_failure = exc
                continue
            if answer:
                yield answer
            return
        if isinstance(last_failure, AdapterLoadFailed):
            raise EngineError(f"The fine-tuned model '{adapter.name if adapter else ''}' could not be loaded.")
        # What went wrong where is in the log: a client learns nothing of the servers behind the gateway.
        raise EngineUnavailable(f"No server for model '{self.model}' could take the request now.")

    async def _on(
        self,
        replica: Replica,
        body: dict[str, Any],
        options: SamplingOptions,
        adapter: AdapterRef | None,
        deadline: float,
    ) -> AsyncIterator[list[CompletionDelta]]:
        async with self._pool.attempt(replica, body, adapter, deadline) as chunks:
            async for chunk in chunks:
                if time.monotonic() > deadline:
                    raise EngineTimeout(PAST_DEADLINE)
                _check_usage(chunk, body)
                try:
                    deltas = chunk_deltas(chunk, options.logprobs)
                except (KeyError, TypeError, ValueError, AttributeError, EngineError) as exc:  # not what vLLM sends
                    raise ReplicaFailed(f"{replica.url} sent a chunk that is not a completion: {exc!r}") from exc
                if deltas:
                    yield deltas

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        await self._pool.remove_adapter(adapter)


def _check_usage(chunk: dict[str, Any], body: dict[str, Any]) -> None:
    usage = chunk.get("usage")
    prompt = body["prompt"]
    if isinstance(usage, dict) and isinstance(prompt, list) and usage.get("prompt_tokens") != len(prompt):
        logger.warning("upstream counted %s prompt tokens for %d sent", usage.get("prompt_tokens"), len(prompt))
