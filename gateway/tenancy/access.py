"""Changes to who may call, as every route makes them (the admin API, the console): keys created, changed (name,
budgets) and revoked, tenants updated, suspended, resumed or deleted. Each change is committed in a worker thread
and then, on the event loop, the key cache forgets the tenant's keys (``KeyCache.invalidate_tenant``), so no
lookup in flight can bring back what was just revoked or suspended. The CLI changes the database alone: a running
gateway sees that within its key-cache TTL."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from gateway.audit import Actor
from gateway.tenancy.key_cache import KeyCache
from gateway.tenancy.models import KeyCreate, KeyCreated, KeyOut, KeyUpdate, TenantOut, TenantUpdate
from gateway.tenancy.service import TenancyService

T = TypeVar("T")


class AccessChanges:
    def __init__(self, tenancy: TenancyService, keys: KeyCache) -> None:
        self._tenancy = tenancy
        self._keys = keys

    async def commit(self, change: Callable[[], T], tenant_of: Callable[[T], str]) -> T:
        """Run ``change`` (its transaction commits in a worker thread), then forget the keys of its tenant."""
        result = await run_in_threadpool(change)
        self._keys.invalidate_tenant(tenant_of(result))
        return result

    async def create_key(self, tenant: str, body: KeyCreate, actor: Actor, *, by_key: str | None = None) -> KeyCreated:
        """A new key (``by_key``: made by that key of the tenant, never broader than it). Nothing cached can
        know a new key (an unknown key is cached as unknown, but a new key's secret was never seen)."""
        return await run_in_threadpool(partial(self._tenancy.create_key, tenant, body, actor=actor, by_key=by_key))

    async def revoke_key(self, tenant: str, key_id: str, actor: Actor, *, by_key: str | None = None) -> KeyOut:
        revoke = partial(self._tenancy.revoke_key, tenant, key_id, actor=actor, by_key=by_key)
        return await self.commit(revoke, lambda key: key.tenant_id)

    async def update_key(self, tenant: str, key_id: str, update: KeyUpdate, actor: Actor) -> KeyOut:
        change = partial(self._tenancy.update_key, tenant, key_id, update, actor)
        return await self.commit(change, lambda key: key.tenant_id)

    async def update_tenant(self, tenant: str, update: TenantUpdate, actor: Actor) -> TenantOut:
        return await self.commit(partial(self._tenancy.update_tenant, tenant, update, actor), lambda out: out.id)
