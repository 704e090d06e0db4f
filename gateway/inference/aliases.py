"""A tenant's model aliases as serving reads them: a name that stands for one of the tenant's models or a weighted
split of two, picked anew for every request (``Alias.pick``).

``AliasBook`` reads a tenant's aliases from the database (all of them, one query: a tenant holds at most
``bounds.ALIASES_PER_TENANT``) and keeps them ``LLMAAS_ALIAS_CACHE_TTL_SECONDS`` (2 s): a move made through any
gateway is in force on every gateway on the same database within that time, and at once on the gateway that made
it (``forget``). A burst of requests of one tenant makes one read (single flight); a change made meanwhile
bumps a generation, so a read that started before it is neither joined nor kept. Runs on the event loop only.
Who may change aliases, and how, is ``gateway.aliases``."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from adapters.api_objects import epoch
from gateway.db import Database, ModelAlias
from gateway.inference.schemas import AliasTarget, ModelOut

_MAX_CACHED_TENANTS = 10_000


@dataclass(frozen=True)
class Alias:
    name: str
    targets: tuple[AliasTarget, ...]
    created: int

    def card(self, tenant_id: str) -> ModelOut:
        """The alias in ``/v1/models``: its name, owned by its tenant, with its targets (our extension field)."""
        return ModelOut(id=self.name, created=self.created, owned_by=tenant_id, targets=list(self.targets))

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the alias may pick."""
        return tuple(target.model for target in self.targets)

    def pick(self) -> str:
        """The model one request runs on: a target drawn by weight (the only one, for a single target)."""
        if len(self.targets) == 1:
            return self.targets[0].model
        return random.choices(self.models, weights=[target.weight for target in self.targets])[0]


Aliases = Mapping[str, Alias]


def _read(db: Database, tenant_id: str) -> dict[str, Alias]:
    """Blocking: the tenant's aliases by name."""
    with db.session() as session:
        rows = session.scalars(select(ModelAlias).where(ModelAlias.tenant_id == tenant_id)).all()
    return {row.name: alias_of(row) for row in rows}


def alias_of(row: ModelAlias) -> Alias:
    targets = tuple(AliasTarget.model_validate(target) for target in row.targets)
    return Alias(row.name, targets, epoch(row.created_at))


@dataclass
class _Flight:
    generation: int
    future: asyncio.Future[Aliases]


class AliasBook:
    def __init__(self, db: Database, ttl_seconds: float) -> None:
        self._db = db
        self._ttl = ttl_seconds
        self._generations: dict[str, int] = {}
        """Per tenant, how many changes this gateway made (one tenant's changes never void another's reads)."""
        self._entries: dict[str, tuple[float, Aliases]] = {}
        self._flights: dict[str, _Flight] = {}

    async def lookup(self, tenant_id: str, name: str) -> Alias | None:
        """The tenant's alias of this name, as the database had it at most the TTL ago."""
        return (await self.of_tenant(tenant_id)).get(name)

    async def of_tenant(self, tenant_id: str) -> Aliases:
        cached = self._entries.get(tenant_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        flight = self._flights.get(tenant_id)
        generation = self._generations.get(tenant_id, 0)
        if flight is None or flight.generation != generation:
            future = asyncio.ensure_future(self._fetch(tenant_id, generation))
            flight = _Flight(generation, future)
            self._flights[tenant_id] = flight
            future.add_done_callback(partial(self._land, tenant_id, flight))
        return await asyncio.shield(flight.future)

    async def _fetch(self, tenant_id: str, generation: int) -> Aliases:
        """Read the tenant's aliases and cache them (a failed read caches nothing: during a database outage each
        request that may name an alias tries the read again)."""
        started = time.monotonic()
        aliases = await run_in_threadpool(_read, self._db, tenant_id)
        # Else the tenant's aliases changed while we read: this result may predate the change.
        if generation == self._generations.get(tenant_id, 0):
            if len(self._entries) >= _MAX_CACHED_TENANTS:
                self._entries.pop(next(iter(self._entries)))
            self._entries[tenant_id] = (started, aliases)
        return aliases

    def _land(self, tenant_id: str, flight: _Flight, _: asyncio.Future[Aliases]) -> None:
        if self._flights.get(tenant_id) is flight:
            del self._flights[tenant_id]

    def forget(self, tenant_id: str) -> None:
        """The tenant's aliases changed (through this gateway): read them anew on the next request."""
        self._generations[tenant_id] = self._generations.get(tenant_id, 0) + 1
        self._entries.pop(tenant_id, None)
