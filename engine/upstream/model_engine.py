"""One base model served by the pool, behind the engine interface the gateway already speaks.

A request goes to the best replica for it (``routing``), with its adapter loaded there first (``placement``).
Connect errors, timeouts, 5xx and overload before the first delta are retried on another replica (at most
``max_attempts`` replicas); once a delta went out, a failure ends the stream. Only a replica's own trouble
(unreachable, cut off, overloaded, 502-504) ejects it. The replica's own token ids
are what the gateway counts, so the ledger holds the upstream's counts. Closing the stream closes the
connection, and vLLM aborts the request."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from engine.protocol import (
    AdapterRef,
    CompletionDelta,
    EngineError,
    EngineLoad,
    EngineUnavailable,
    SamplingOptions,
    Tokenizer,
)
from engine.upstream.client import AdapterLoadFailed, ModelMissing, ReplicaFailed
from engine.upstream.replica import Replica
from engine.upstream.translate import chunk_deltas, completion_body

if TYPE_CHECKING:
    from engine.upstream.pool import UpstreamPool

logger = logging.getLogger(__name__)


class UpstreamEngine:
    def __init__(self, model: str, tokenizer: Tokenizer, pool: UpstreamPool) -> None:
        self.model = model
        self._tokenizer = tokenizer
        self._pool = pool
        self._max_model_len = 0

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        """The shortest context among the replicas that serve it (while none does: the last one known)."""
        lengths = [r.models[self.model].max_model_len for r in self._pool.all_replicas() if r.serves(self.model)]
        if lengths:
            self._max_model_len = min(lengths)
        return self._max_model_len

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncIterator[list[CompletionDelta]]:
        settings = self._pool.settings
        deadline = time.monotonic() + settings.request_deadline_seconds
        body = completion_body(adapter.name if adapter else self.model, prompt_token_ids, options)
        tried: set[str] = set()
        last_failure: Exception | None = None
        for _ in range(settings.max_attempts):
            candidates = [r for r in self._pool.serving(self.model) if r.url not in tried]
            if not candidates:
                break
            replica = self._pool.router.rank(candidates, adapter.name if adapter else None)[0]
            tried.add(replica.url)
            sent_any = False
            try:
                async for deltas in self._on(replica, body, options, adapter, deadline):
                    sent_any = True
                    yield deltas
                return
            except ReplicaFailed as exc:
                if sent_any:
                    logger.warning("upstream %s failed mid-answer: %s", replica.url, exc)
                    raise EngineError("The model server failed in the middle of the answer.") from exc
                logger.warning("upstream %s failed before answering, trying another: %s", replica.url, exc)
                self._note_failure(replica, exc, adapter)
                if isinstance(exc, ModelMissing) and adapter is not None:
                    tried.discard(replica.url)  # it may take the request once the adapter is loaded again
                last_failure = exc
        if isinstance(last_failure, AdapterLoadFailed):
            raise EngineError(f"The fine-tuned model '{adapter.name if adapter else ''}' could not be loaded.")
        # What went wrong where is in the log: a client learns nothing of the servers behind the gateway.
        raise EngineUnavailable(f"No server for model '{self.model}' could take the request now.")

    async def _on(
        self,
        replica: Replica,
        body: dict[str, object],
        options: SamplingOptions,
        adapter: AdapterRef | None,
        deadline: float,
    ) -> AsyncIterator[list[CompletionDelta]]:
        replica.in_flight += 1
        if adapter is not None:
            replica.in_flight_by_adapter[adapter.name] += 1
        try:
            if adapter is not None:
                await self._pool.placement.ensure_loaded(replica, adapter)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineError("The request ran past its deadline and was stopped.")
            read_timeout = min(self._pool.settings.read_timeout_seconds, remaining)
            async with self._pool.client.stream_completion(replica, body, read_timeout) as chunks:
                async for chunk in chunks:
                    if time.monotonic() > deadline:
                        raise EngineError("The request ran past its deadline and was stopped.")
                    self._check_usage(chunk, body)
                    deltas = chunk_deltas(chunk, options.logprobs)
                    if deltas:
                        yield deltas
        finally:
            replica.in_flight -= 1
            if adapter is not None:
                replica.in_flight_by_adapter[adapter.name] -= 1

    def _note_failure(self, replica: Replica, exc: ReplicaFailed, adapter: AdapterRef | None) -> None:
        if isinstance(exc, ModelMissing):
            if adapter is not None:  # it restarted and lost the adapter: load it again, there or elsewhere
                replica.adapters.pop(adapter.name, None)
            return
        if exc.eject:
            logger.warning("ejecting upstream %s for %.0f s: %s", replica.url, self._pool.settings.eject_seconds, exc)
            replica.eject(self._pool.settings.eject_seconds)

    def _check_usage(self, chunk: dict[str, object], body: dict[str, object]) -> None:
        usage = chunk.get("usage")
        prompt = body["prompt"]
        if isinstance(usage, dict) and isinstance(prompt, list) and usage.get("prompt_tokens") != len(prompt):
            logger.warning("upstream counted %s prompt tokens for %d sent", usage.get("prompt_tokens"), len(prompt))

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        await self._pool.placement.remove_everywhere(self._pool.all_replicas(), adapter)

    async def abort(self, request_id: str) -> None:
        """Nothing to do: closing a request's stream closes its connection, and the replica aborts it."""

    def load(self) -> EngineLoad:
        return self._pool.load()

    @property
    def info(self) -> dict[str, str]:
        serving = [r for r in self._pool.all_replicas() if r.serves(self.model)]
        available = self._pool.serving(self.model)
        return {
            "backend": "upstream",
            "replicas": f"{len(available)}/{len(serving)} available",
            "routing": self._pool.settings.routing,
        }

    def unfinished_requests(self) -> int:
        return self._pool.unfinished_requests()

    async def check_health(self) -> None:
        if not self._pool.serving(self.model):
            raise EngineUnavailable(f"No server for model '{self.model}' is available.")

    def shutdown(self) -> None:
        """The pool owns the connections and closes them."""
