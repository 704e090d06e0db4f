"""Which replica takes a request: the replicas that serve the model, best first (the rest are the failover
order). Pure functions of the replicas' state, so policies are easy to compare (``bench/routing.py``).

``adapter-aware`` scores a replica for an adapter as the Gateway API inference extension does — adapter
running 1.0, a free adapter slot 0.8 (0.85 when it is loaded already, so no load is needed), adapter only
waiting 0.6, else 0 — and subtracts its load: requests on it (our count or its scrape, whichever is higher)
and its KV-cache use. Base-model requests go to the least loaded. ``prefix-aware`` (the default) adds to that
score the share of the prompt a replica likely holds in its prefix cache (``engine.upstream.prefix_index``),
worth up to ``PREFIX_WEIGHT``, and counts its KV-cache use only for the share of the prompt it would need room
for anew (a small cache is mostly "used" by the very prefix the request would share). A full match outweighs
``PREFIX_WEIGHT / LOAD_WEIGHT`` requests more on the holder, and no more, so a hot prefix spills onto the next
replica (which then holds it too) instead of piling up on one. A prefix no replica holds goes where the cache
is emptiest, other things equal (``FULLNESS_WEIGHT``: so the tenants' prefixes spread evenly over the caches
instead of evicting each other on one); with no prompt to go by it ranks exactly as ``adapter-aware``.
``least-busy`` ignores adapters; ``round-robin`` ignores everything (both are there to be compared against)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from engine.upstream.prefix_index import PrefixIndex
from engine.upstream.replica import Replica
from engine.upstream.settings import RoutingPolicy

LOAD_WEIGHT = 0.04
"""Score lost per request on a replica: an adapter's affinity (0.2 between tiers) is worth ~5 queued requests."""
KV_WEIGHT = 0.5
PREFIX_WEIGHT = 0.16
"""Score of a replica holding the whole prompt: worth 4 more requests on it (a cached ~1,000-token prompt on a
CPU replica saves about as long a wait as 4 requests ahead of it cost)."""
FULLNESS_WEIGHT = 0.06
"""Score lost by a replica whose prefix cache is full (as the index remembers it), against an empty one."""


def adapter_affinity(replica: Replica, adapter: str) -> float:
    if replica.adapter_active(adapter):
        return 1.0
    in_use = replica.adapters_in_use()
    slots = replica.signals.max_loras
    if slots is None or len(in_use) < slots:
        return 0.85 if adapter in replica.adapters else 0.8
    if adapter in replica.signals.waiting_adapters:
        return 0.6
    return 0.0


def load_penalty(replica: Replica) -> float:
    return LOAD_WEIGHT * replica.busy() + KV_WEIGHT * replica.signals.kv_cache_usage


def affinity(replica: Replica, adapter: str | None) -> float:
    return 0.0 if adapter is None else adapter_affinity(replica, adapter)


class Router:
    def __init__(self, policy: RoutingPolicy, prefixes: PrefixIndex | None = None) -> None:
        self.policy = policy
        self.prefixes = prefixes or PrefixIndex()
        self._turns = itertools.count()

    def rank(
        self, replicas: Sequence[Replica], adapter: str | None, prompt: Sequence[int] = (), salt: str | None = None
    ) -> list[Replica]:
        """Best first. Equals are taken in turns, so idle replicas share sequential traffic."""
        if not replicas:
            return []
        start = next(self._turns) % len(replicas)
        rotated = [*replicas[start:], *replicas[:start]]
        if self.policy == "round-robin":
            return rotated
        if self.policy == "least-busy":
            return sorted(rotated, key=load_penalty)
        if self.policy == "adapter-aware" or not prompt:
            return sorted(rotated, key=lambda r: load_penalty(r) - affinity(r, adapter))
        held = self.prefixes.matched_fraction(rotated, prompt, (salt, adapter))

        def cost(replica: Replica) -> float:
            share = held[replica.url]
            # Its KV use weighs by the blocks this request needs anew: what it finds cached takes no more room.
            load = LOAD_WEIGHT * replica.busy() + KV_WEIGHT * replica.signals.kv_cache_usage * (1 - share)
            cache = FULLNESS_WEIGHT * self.prefixes.fullness(replica) - PREFIX_WEIGHT * share
            return load - affinity(replica, adapter) + cache

        return sorted(rotated, key=cost)

    def sent(
        self, replica: Replica, prompt: Sequence[int], adapter: str | None = None, salt: str | None = None
    ) -> None:
        """The prompt went to ``replica`` (for ``adapter``, cached under ``salt``): under ``prefix-aware``, remember
        its blocks there."""
        if self.policy == "prefix-aware":
            self.prefixes.record(replica, prompt, (salt, adapter))
