"""Adapters in replicas: loaded into a replica at first use (``POST /v1/load_lora_adapter``, once per replica
at a time, retried), the least recently used unloaded when the replica holds its share, and unloaded
everywhere when the fine-tuned model is deleted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from engine.protocol import AdapterRef
from engine.upstream.client import ReplicaClient, ReplicaFailed
from engine.upstream.replica import Replica

logger = logging.getLogger(__name__)
LOAD_TRIES = 2
RETRY_PAUSE_SECONDS = 0.2


def _forget(replica: Replica, name: str, load: asyncio.Task[None]) -> None:
    replica.loading.pop(name, None)
    if not load.cancelled():
        load.exception()  # the requests that waited got it; nobody else need retrieve it


class AdapterPlacement:
    def __init__(self, client: ReplicaClient, location: Callable[[AdapterRef], str], per_replica: int) -> None:
        self._client = client
        self._location = location
        self._per_replica = per_replica

    async def ensure_loaded(self, replica: Replica, adapter: AdapterRef) -> None:
        """Return once ``adapter`` is loaded in ``replica``. The load runs as a task of its own, shared by every
        request that needs it meanwhile, so a client that leaves does not cancel it for the others."""
        name = adapter.name
        if name in replica.adapters and name not in replica.loading:
            replica.touch(name)
            return
        load = replica.loading.get(name)
        if load is None:
            load = asyncio.create_task(self._load_into(replica, adapter))
            replica.loading[name] = load
            load.add_done_callback(lambda task: _forget(replica, name, task))
        await asyncio.shield(load)

    async def _load_into(self, replica: Replica, adapter: AdapterRef) -> None:
        await self._make_room(replica)
        await self._load(replica, adapter)
        replica.touch(adapter.name)

    async def _load(self, replica: Replica, adapter: AdapterRef) -> None:
        for attempt in range(LOAD_TRIES):
            try:
                await self._client.load_adapter(replica, adapter.name, self._location(adapter))
                replica.adapter_loads += 1
                logger.info("loaded adapter %s into %s", adapter.name, replica.url)
                return
            except ReplicaFailed:
                if attempt == LOAD_TRIES - 1:
                    raise
                await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def _make_room(self, replica: Replica) -> None:
        in_use = replica.adapters_in_use() | set(replica.loading)
        while len(replica.adapters) >= self._per_replica:
            victim = next((name for name in replica.adapters if name not in in_use), None)
            if victim is None:
                return  # all in use: the replica's own LRU (max_cpu_loras) copes
            replica.adapters.pop(victim, None)
            await self._client.unload_adapter(replica, victim)
            logger.info("unloaded adapter %s from %s (least recently used)", victim, replica.url)

    async def remove_everywhere(self, replicas: list[Replica], adapter: AdapterRef) -> None:
        async def unload(replica: Replica) -> None:
            replica.adapters.pop(adapter.name, None)
            with contextlib.suppress(ReplicaFailed):  # a replica that is down lost it anyway
                await self._client.unload_adapter(replica, adapter.name)

        await asyncio.gather(*(unload(replica) for replica in replicas))
