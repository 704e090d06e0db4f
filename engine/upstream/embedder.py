"""One embedding model served by the pool, behind the per-model ``Embedder`` interface: a request (all its
inputs as token ids, in one ``POST /v1/embeddings``) goes to the best replica that serves the model
(``UpstreamPool.ranked``); connect errors, timeouts, 5xx and overload are retried on another (at most
``max_attempts``), and a replica in trouble is ejected (``UpstreamPool.note_failure``), as for generation. The
gateway counts the tokens it sent (the replica's own count is checked against them)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from engine.protocol import EngineError, EngineUnavailable, TextEncoder
from engine.upstream.client import ReplicaFailed
from engine.upstream.settings import UpstreamSettings

if TYPE_CHECKING:
    from engine.upstream.pool import UpstreamPool

logger = logging.getLogger(__name__)


class UpstreamEmbedder:
    def __init__(
        self,
        model: str,
        tokenizer: TextEncoder,
        supports_dimensions: bool,
        pool: UpstreamPool,
        settings: UpstreamSettings,
    ) -> None:
        self.model = model
        self._settings = settings
        self._tokenizer = tokenizer
        self._supports_dimensions = supports_dimensions
        self._pool = pool
        self._max_model_len = 0

    @property
    def tokenizer(self) -> TextEncoder:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        """The shortest context among the replicas that serve it (while none does: the last one known)."""
        self._max_model_len = self._pool.context_length(self.model) or self._max_model_len
        return self._max_model_len

    @property
    def supports_dimensions(self) -> bool:
        return self._supports_dimensions

    async def embed(
        self, prompts: list[list[int]], request_id: str, dimensions: int | None = None
    ) -> list[list[float]]:
        deadline = time.monotonic() + self._settings.request_deadline_seconds
        body: dict[str, Any] = {"model": self.model, "input": prompts, "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        tried: set[str] = set()
        for _ in range(self._settings.max_attempts):
            candidates = self._pool.ranked(self.model, None, exclude=tried)
            if not candidates:
                break
            replica = candidates[0]
            tried.add(replica.url)
            try:
                answer = await self._pool.embed(replica, body, deadline)
            except ReplicaFailed as exc:
                logger.warning("upstream %s failed embeddings %s, trying another: %s", replica.url, request_id, exc)
                self._pool.note_failure(replica, exc, None)
                continue
            return _vectors(answer, prompts, replica.url)
        # What went wrong where is in the log: a client learns nothing of the servers behind the gateway.
        raise EngineUnavailable(f"No server for model '{self.model}' could take the request now.")


def _vectors(answer: Any, prompts: list[list[int]], url: str) -> list[list[float]]:
    try:
        items = sorted(answer["data"], key=lambda item: int(item["index"]))
        vectors = [[float(x) for x in item["embedding"]] for item in items]
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineError("The model server answered embeddings in a shape we do not know.") from exc
    if len(vectors) != len(prompts):
        raise EngineError("The model server answered a different number of embeddings than asked.")
    counted = (answer.get("usage") or {}).get("prompt_tokens")
    if counted != sum(len(prompt) for prompt in prompts):
        logger.warning("upstream %s counted %s prompt tokens for %d sent", url, counted, sum(map(len, prompts)))
    return vectors
