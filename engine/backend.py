"""The seam between the gateway and what serves its models: a ``Backend`` starts and stops the serving
processes (or connections), offers the models it serves now, each with its per-model ``Engine`` and its
capabilities, and reports its status (per-model description, load, replicas) for ``/ready`` and ``/metrics``.

Two implementations: ``engine.vllm_engine.VLLMBackend`` (the models of this process: the chat model, the
embedding model, the operator's extra models) and
``engine.upstream.pool.UpstreamPool`` (the models of many vLLM servers); ``engine.factory.build_backend``
picks one from the settings. Each model kind is a capability with its own per-model interface: ``Engine``
generates, ``Embedder`` (a pooling model) embeds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from engine.protocol import AdapterRef, Embedder, Engine
from engine.settings import EngineSettings


class Capability(StrEnum):
    """What a served model can be asked to do."""

    GENERATE = "generate"
    """Completions and chat completions (``Engine.generate``)."""
    EMBED = "embed"
    """Embeddings (``Embedder.embed``)."""


@dataclass(frozen=True)
class ModelOffer:
    """A model a backend serves, by what it can do: generate (its ``engine``) or embed (its ``embedder``)."""

    engine: Engine | None = None
    embedder: Embedder | None = None

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(
            capability
            for capability, interface in ((Capability.GENERATE, self.engine), (Capability.EMBED, self.embedder))
            if interface is not None
        )


@dataclass(frozen=True)
class EngineLoad:
    running: int
    waiting: int
    kv_cache_usage: float


@dataclass(frozen=True)
class SpeculationCounts:
    """Speculative decoding since the engine started: draft tokens proposed, and those the model accepted."""

    drafted: int = 0
    accepted: int = 0


@dataclass(frozen=True)
class ReplicaStatus:
    """One model server behind the backend, as ``/metrics`` shows it."""

    url: str
    available: bool
    models: tuple[str, ...]
    in_flight: int
    running: int
    waiting: int
    kv_cache_usage: float
    adapters_loaded: int
    adapter_loads: int


@dataclass(frozen=True)
class BackendStatus:
    """What ``/ready`` and ``/metrics`` show of a backend, read when asked."""

    models: Mapping[str, Mapping[str, str]]
    """How each served model runs (dtype and hardware; or its replicas), by id."""
    load: EngineLoad
    """Requests running and waiting, KV cache in use (summed, or the highest, over replicas)."""
    unfinished_requests: int
    """Requests the backend holds for this gateway (running, waiting or being detokenized)."""
    replicas: tuple[ReplicaStatus, ...] = ()
    """The model servers behind it, where there are several."""
    speculation: SpeculationCounts | None = None
    """Speculative decoding's drafts and acceptances in this process, summed over its models; None: not measured
    here (no speculation, or a backend whose servers count it themselves)."""


class Backend(Protocol):
    """The thing that serves models."""

    async def start(self) -> None:
        """Bring the models up (load them, or find the servers that serve them)."""
        ...

    async def close(self) -> None:
        """Release everything ``start`` took; safe to call when ``start`` did not run or failed."""
        ...

    def models(self) -> Mapping[str, ModelOffer]:
        """The models served now, by the id clients put in ``model`` (read on every request: it may change)."""
        ...

    def status(self) -> BackendStatus: ...

    async def check_health(self) -> None:
        """Raise ``EngineError`` where a served model cannot take requests now."""
        ...


class AdapterStore(Protocol):
    def location_for_replicas(self, adapter: AdapterRef) -> str:
        """What a model server elsewhere is told to load the adapter from."""
        ...


AdapterStoreAt = Callable[[str | None], AdapterStore]
"""The gateway's adapter store as model servers see it, given where they mount it (None: the same path)."""
BackendFactory = Callable[[EngineSettings, AdapterStoreAt], Backend]
