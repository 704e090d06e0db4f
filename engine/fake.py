"""A deterministic, instant engine for tests of gateway logic and the gateway-overhead benchmark.

It speaks the same interface as the vLLM engine: a byte-level tokenizer (one token per UTF-8 byte), and a
generator that spells out a fixed text, one token per step, optionally pausing between steps. ``FakeBackend``
serves one such engine, and ``fake_backend`` hands one to ``create_app`` in place of ``build_backend``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from engine.backend import AdapterStoreAt, BackendFactory, BackendStatus, EngineLoad, ModelOffer
from engine.protocol import AdapterRef, CompletionDelta, FinishReason, SamplingOptions, TokenLogprob
from engine.settings import EngineSettings

_REPLY = "The quick brown fox jumps over the lazy dog. "


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(token_ids).decode("utf-8", errors="replace")

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> str:
        turns = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return turns + "<assistant>"

    @property
    def renders_tools(self) -> bool:
        return False

    @property
    def vocab_size(self) -> int:
        return 256


class FakeEngine:
    def __init__(self, max_model_len: int = 2048, seconds_per_token: float = 0.0) -> None:
        self._tokenizer = ByteTokenizer()
        self._max_model_len = max_model_len
        self._seconds_per_token = seconds_per_token
        self.active: set[str] = set()
        """The requests it is generating."""

    @property
    def tokenizer(self) -> ByteTokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
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
        self.active.add(request_id)
        try:
            reply = _REPLY.encode()
            for step in range(options.max_tokens):
                await asyncio.sleep(self._seconds_per_token)
                token = reply[step % len(reply)]
                text = chr(token)
                finish: FinishReason | None = "length" if step == options.max_tokens - 1 else None
                logprobs = [TokenLogprob(text, 0.0, ((text, 0.0),))] if options.logprobs is not None else []
                yield [CompletionDelta(i, text, [token], logprobs, finish) for i in range(options.n)]
        finally:
            self.active.discard(request_id)

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        return None


class FakeBackend:
    """Serves one fake engine as ``model_id``."""

    def __init__(self, model_id: str, engine: FakeEngine) -> None:
        self._model_id = model_id
        self._engine = engine
        self._models = {model_id: ModelOffer(engine)}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._engine.active.clear()

    def models(self) -> Mapping[str, ModelOffer]:
        return self._models

    def status(self) -> BackendStatus:
        running = len(self._engine.active)
        models = {self._model_id: {"dtype": "none", "hardware": "an instant fake engine"}}
        return BackendStatus(models, EngineLoad(running=running, waiting=0, kv_cache_usage=0.0), running)

    async def check_health(self) -> None:
        return None


def fake_backend(engine: FakeEngine) -> BackendFactory:
    """A backend factory that serves ``engine`` under the settings' ``served_model_name``."""

    def build(settings: EngineSettings, adapter_store: AdapterStoreAt) -> FakeBackend:
        return FakeBackend(settings.served_model_name, engine)

    return build
