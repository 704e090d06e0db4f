"""API keys to identities through a short-lived cache (``LLMAAS_KEY_CACHE_TTL_SECONDS``, at most 5 s).

Keys are looked up by their SHA-256 digest, so lookup timing says nothing about the key. A burst of requests
with one uncached key makes one database lookup (single flight); an unknown key is remembered as unknown for
the TTL too (keys are random: a key that was unknown cannot have been issued meanwhile).
``invalidate_tenant`` bumps a generation counter: a lookup that started before it can neither be joined by
later requests nor write its (possibly stale) result into the cache, so a revocation or suspension done
through this gateway holds at once; done through another gateway or the CLI, it holds within the TTL. Runs on
the event loop only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from starlette.concurrency import run_in_threadpool

from gateway.tenancy.keys import key_hash
from gateway.tenancy.service import KeyIdentity

_MAX_CACHED = 100_000

Lookup = Callable[[str], KeyIdentity | None]
"""The identity of a key hash, from the database (runs in a worker thread)."""


@dataclass
class _Flight:
    generation: int
    future: asyncio.Future[KeyIdentity | None]


class KeyCache:
    def __init__(self, lookup: Lookup, ttl_seconds: float) -> None:
        self._lookup = lookup
        self._ttl = ttl_seconds
        self._generation = 0
        self._entries: dict[str, tuple[float, KeyIdentity | None]] = {}
        self._flights: dict[str, _Flight] = {}

    async def identify(self, key: str) -> KeyIdentity | None:
        hashed = key_hash(key)
        cached = self._entries.get(hashed)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        flight = self._flights.get(hashed)
        if flight is None or flight.generation != self._generation:
            flight = _Flight(self._generation, asyncio.ensure_future(self._fetch(hashed, self._generation)))
            self._flights[hashed] = flight
            flight.future.add_done_callback(partial(self._land, hashed, flight))
        return await asyncio.shield(flight.future)

    async def _fetch(self, hashed: str, generation: int) -> KeyIdentity | None:
        started = time.monotonic()
        identity = await run_in_threadpool(self._lookup, hashed)
        if generation != self._generation:  # invalidated while we read: this result may predate the change
            return identity
        if len(self._entries) >= _MAX_CACHED:
            self._entries.pop(next(iter(self._entries)))
        self._entries[hashed] = (started, identity)
        return identity

    def _land(self, hashed: str, flight: _Flight, _: asyncio.Future[KeyIdentity | None]) -> None:
        if self._flights.get(hashed) is flight:
            del self._flights[hashed]

    def invalidate_tenant(self, tenant_id: str) -> None:
        """Forget the tenant's keys at once, including lookups under way."""
        self._generation += 1
        for hashed in [h for h, (_, ident) in self._entries.items() if ident and ident.tenant_id == tenant_id]:
            self._entries.pop(hashed, None)
