"""What the gateway knows of one replica: what its last scrape said (health, load, models, loaded adapters),
its passive ejection, this gateway's own requests and adapter loads in flight on it, and the prompt prefixes
this gateway sent it (forgotten when it restarts, fails a check or is ejected)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from engine.upstream.discovery import UpstreamSpec
from engine.upstream.prefix_index import PrefixMemory
from engine.upstream.signals import ReplicaSignals


@dataclass(frozen=True)
class ModelCard:
    """A base model a replica serves, from its ``/v1/models``, and what it does there (from the routes its
    ``/openapi.json`` lists: vLLM serves ``/v1/completions`` for a generating model, ``/v1/embeddings`` for an
    embedding one)."""

    id: str
    root: str
    max_model_len: int
    generates: bool = True
    embeds: bool = False


class Replica:
    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.healthy = False
        """The last active check (``/health`` and a scrape) succeeded."""
        self.ejected_until = 0.0
        """Passive ejection: a request failed on it; left out until then, and until a check succeeds after."""
        self.signals = ReplicaSignals()
        self.models: dict[str, ModelCard] = {}
        self.adapters: OrderedDict[str, None] = OrderedDict()
        """Adapters loaded in it, least recently used first (its ``/v1/models`` children, and our loads)."""
        self.in_flight = 0
        self.in_flight_by_adapter: Counter[str] = Counter()
        self.adapter_loads = 0
        """Adapters this gateway loaded into it (a measure of churn: each costs a read of the adapter's files)."""
        self.loading: dict[str, asyncio.Task[None]] = {}
        """Adapter loads under way: one per adapter and replica at a time; others wait on it."""
        self.prefixes = PrefixMemory()
        """The prompt blocks sent to it, likely in its prefix cache (``engine.upstream.prefix_index``)."""

    @property
    def url(self) -> str:
        return self.spec.url

    def available(self, now: float | None = None) -> bool:
        return self.healthy and (now or time.monotonic()) >= self.ejected_until

    def serves(self, model: str) -> bool:
        return model in self.models

    def eject(self, seconds: float) -> None:
        """Leave it out for ``seconds``; it comes back when a check succeeds after that."""
        self.ejected_until = time.monotonic() + seconds
        self.healthy = False
        self.prefixes.clear()

    def busy(self) -> int:
        """Requests on it: the freshest of our own count and its last scrape (which sees other gateways too)."""
        return max(self.in_flight, self.signals.running + self.signals.waiting)

    def adapter_active(self, name: str) -> bool:
        return self.in_flight_by_adapter[name] > 0 or name in self.signals.running_adapters

    def adapters_in_use(self) -> set[str]:
        ours = {name for name, count in self.in_flight_by_adapter.items() if count > 0}
        return ours | self.signals.running_adapters | self.signals.waiting_adapters

    def touch(self, adapter: str) -> None:
        self.adapters[adapter] = None
        self.adapters.move_to_end(adapter)

    def refresh(self, signals: ReplicaSignals, models: dict[str, ModelCard], loaded: list[str]) -> None:
        """A successful scrape: its load, models and adapters, as it says them. A restarted server lost its
        adapters and its prefix cache; what it lists now is the truth (an adapter we load meanwhile is re-added on
        success)."""
        if signals.started_at != self.signals.started_at:
            self.prefixes.clear()
        self.signals = signals
        self.models = models
        recency = {name: index for index, name in enumerate(self.adapters)}
        self.adapters = OrderedDict((name, None) for name in sorted(loaded, key=lambda n: recency.get(n, -1)))
        if time.monotonic() >= self.ejected_until:
            self.healthy = True

    def mark_down(self) -> None:
        self.healthy = False
        self.prefixes.clear()
