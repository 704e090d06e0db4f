"""The per-model interfaces the gateway sees (``Engine``: its tokenizer, its context length, generate as an async
stream of deltas, adapters; ``Embedder``: an embedding model's tokenizer, context length and vectors) and the
plain values that cross them. An engine knows nothing of processes: what runs
the models (starts, stops, reports load) is a backend (``engine.backend``). Only ``engine.vllm_engine`` knows
vLLM; everything here is plain Python."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]
StructuredKind = Literal["json", "json_object", "regex", "choice", "grammar"]


class EngineError(RuntimeError):
    """The engine failed while serving a request (not the caller's fault)."""


class EngineUnavailable(EngineError):
    """No engine can take the request now (every upstream replica down or ejected); worth retrying later."""


class EngineTimeout(EngineError):
    """The request ran past its deadline and was stopped (retrying it would take as long)."""


class RequestRejected(ValueError):
    """The engine refused the request's parameters or prompt (the caller's fault)."""


@dataclass(frozen=True)
class StructuredOutput:
    """What the output must match, enforced token by token by the engine's structured-output backend (vLLM:
    xgrammar or llguidance). ``spec`` by kind: ``json``: a JSON schema serialised as JSON text (the same text for
    the same schema: the engine caches compiled grammars by it); ``json_object``: empty (any JSON object);
    ``regex``: a regular expression; ``choice``: a JSON array of the allowed strings; ``grammar``: an EBNF / Lark
    grammar. Checked (size, features, compile time) by the gateway before it gets here."""

    kind: StructuredKind
    spec: str = ""


@dataclass(frozen=True)
class SamplingOptions:
    """What to generate; validated by the gateway before it gets here."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    """None: no logprobs. k >= 0: the sampled token's logprob plus the k most likely alternatives."""
    ignore_eos: bool = False
    structured: StructuredOutput | None = None
    priority: int = 0
    """Lower first: the engine's own order among what it runs (vLLM's priority scheduling, in process: it preempts
    the highest value first when the KV cache runs short). The gateway's priority class rank."""
    cache_salt: str | None = None
    """The prefix cache's namespace: a prompt only reuses cached blocks of prompts with the same salt (the gateway
    gives each tenant's id, so no tenant can learn from ``cached_tokens`` what another sent)."""


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter to apply to a request: a unique name, a stable positive int id, its peft dir."""

    name: str
    int_id: int
    path: Path


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class CompletionDelta:
    """New output of one of the ``n`` completions since the previous delta."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    cached_tokens: int | None = None
    """Of the engine request's prompt, the tokens the engine read from its prefix cache rather than computed. Set
    on one delta per engine request (None on the others): in process, on its first; upstream, on a delta of its
    own with no text (the replica reports the count in its closing usage chunk)."""


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> str:
        """The conversation as the model's prompt, ending with the assistant's turn. Messages are OpenAI-shaped
        dicts (``role``, ``content``; an assistant's ``tool_calls`` with ``arguments`` as an object, a tool
        result's ``tool_call_id``); ``tools`` (OpenAI function tools) go to the template, which must render them
        (``renders_tools``)."""
        ...

    @property
    def renders_tools(self) -> bool:
        """Whether the chat template renders the ``tools`` it is given (the gateway renders them otherwise)."""
        ...

    @property
    def vocab_size(self) -> int: ...


class Engine(Protocol):
    """One served model that streams completions for token prompts."""

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def max_model_len(self) -> int: ...

    def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
        *,
        whole: bool = False,
    ) -> AsyncIterator[list[CompletionDelta]]:
        """Yield batches of deltas until every completion finished. Closing the iterator aborts the
        request in the engine and frees its KV cache. With ``adapter``, the LoRA adapter is loaded on first
        use (bounded LRU) and applied to this request only; requests with different adapters share batches.
        ``whole``: the caller shows nothing before the answer is complete (a non-streamed request), so an engine
        that can try again elsewhere (upstream replicas) may restart it after a failure at any point, and yields
        only a complete answer; a failure after a delta went out otherwise ends the stream."""
        ...

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        """Unload an adapter that is being deleted."""
        ...


class TextEncoder(Protocol):
    """An embedding model's tokenizer: text to the token ids the model embeds (with its special tokens)."""

    def encode(self, text: str) -> list[int]: ...

    @property
    def vocab_size(self) -> int: ...


class Embedder(Protocol):
    """One served embedding model (a pooling model): token prompts to vectors."""

    @property
    def tokenizer(self) -> TextEncoder: ...

    @property
    def max_model_len(self) -> int:
        """The most tokens one input may hold."""
        ...

    @property
    def supports_dimensions(self) -> bool:
        """Whether ``embed`` takes ``dimensions`` (a Matryoshka model, whose shortened vectors keep their meaning)."""
        ...

    async def embed(
        self, prompts: list[list[int]], request_id: str, dimensions: int | None = None
    ) -> list[list[float]]:
        """One normalised vector per prompt, in order. Cancelling the call aborts the requests in the engine."""
        ...
