"""One gateway's scheduler over its own engines (in process): per model, the sequences running and each tenant's
share of them, and the requests waiting in ``FairOrder``. A request that fits with nobody waiting runs at once; the
others wait until a run ends and ``_admit`` reaches them, their deadline passes, or their client leaves (its place
is freed at once). A tenant with nothing running may take one of the burst slots beyond the capacity at once, so
one tenant never holds every slot while another waits (fair queuing only)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from gateway.scheduling import PRIORITY_CLASSES, PriorityClass
from gateway.scheduling.order import FairOrder
from gateway.scheduling.slots import (
    Capacity,
    QueueLimits,
    QueueTimeout,
    ServerQueueFull,
    SlotDemand,
    TenantQueueFull,
    WaitObserver,
)


@dataclass
class _Pool:
    """One model's engine: what runs on it, and who waits for it."""

    model: str
    order: FairOrder
    running: int = 0
    by_tenant: Counter[str] = field(default_factory=Counter)
    granted: dict[str, asyncio.Future[int]] = field(default_factory=dict)


class _Held:
    def __init__(self, scheduler: MemoryScheduler, pool: _Pool, tenant_id: str, slots: int) -> None:
        self._scheduler = scheduler
        self._pool = pool
        self._tenant_id = tenant_id
        self._slots = slots
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._scheduler.give_back(self._pool, self._tenant_id, self._slots)


class MemoryScheduler:
    def __init__(self, limits: QueueLimits, capacity: Capacity, observe_wait: WaitObserver) -> None:
        self._limits = limits
        self._capacity = capacity
        self._observe_wait = observe_wait
        self._pools: dict[str, _Pool] = {}

    def _pool(self, model: str) -> _Pool:
        pool = self._pools.get(model)
        if pool is None:
            pool = self._pools[model] = _Pool(model, FairOrder(self._limits.fair))
        return pool

    def _fits(self, pool: _Pool, demand: SlotDemand, capacity: int, behind: bool) -> int | None:
        """The slots ``demand`` takes if it may run now, else None. ``behind``: others wait ahead of it, so only a
        burst slot may take it."""
        slots = min(demand.sequences, capacity)
        if not behind and pool.running + slots <= capacity:
            return slots
        burst = self._limits.burst_slots if self._limits.fair else 0
        if burst and not pool.by_tenant[demand.tenant_id] and pool.running + slots <= capacity + burst:
            return slots
        return None

    @staticmethod
    def _take(pool: _Pool, tenant_id: str, slots: int) -> None:
        pool.running += slots
        pool.by_tenant[tenant_id] += slots

    async def acquire(self, model: str, demand: SlotDemand) -> _Held:
        pool = self._pool(model)
        capacity = max(1, self._capacity(model))
        if not len(pool.order):
            slots = self._fits(pool, demand, capacity, behind=False)
            if slots is not None:
                self._take(pool, demand.tenant_id, slots)
                pool.order.charge(demand)
                self._observe_wait(demand.priority_class, 0.0)
                return _Held(self, pool, demand.tenant_id, slots)
        limits = self._limits
        if pool.order.waiting_of(demand.tenant_id) >= limits.max_waiting_per_tenant:
            raise TenantQueueFull(limits.max_waiting_per_tenant)
        if sum(len(p.order) for p in self._pools.values()) >= limits.max_waiting:
            raise ServerQueueFull()
        started = time.monotonic()
        granted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        pool.order.add(demand)
        pool.granted[demand.request_id] = granted
        self._admit(pool)
        try:
            slots = await asyncio.wait_for(asyncio.shield(granted), limits.wait_seconds)
        except BaseException as exc:
            pool.granted.pop(demand.request_id, None)
            if granted.done() and not granted.cancelled():  # admitted as it gave up: hand the slots on
                self.give_back(pool, demand.tenant_id, granted.result())
            else:
                granted.cancel()
                pool.order.remove(demand.request_id, admitted=False)
                self._admit(pool)  # it may have held up those behind it
            if isinstance(exc, TimeoutError):
                raise QueueTimeout(time.monotonic() - started) from None
            raise
        self._observe_wait(demand.priority_class, time.monotonic() - started)
        return _Held(self, pool, demand.tenant_id, slots)

    def give_back(self, pool: _Pool, tenant_id: str, slots: int) -> None:
        pool.running -= slots
        pool.by_tenant[tenant_id] -= slots
        if pool.by_tenant[tenant_id] <= 0:
            del pool.by_tenant[tenant_id]
        self._admit(pool)

    def _admit(self, pool: _Pool) -> None:
        """Start waiting requests while ``_next`` finds one that may run."""
        capacity = max(1, self._capacity(pool.model))
        while (picked := self._next(pool, capacity)) is not None:
            demand, slots = picked
            pool.order.remove(demand.request_id, admitted=True)
            self._take(pool, demand.tenant_id, slots)
            pool.granted.pop(demand.request_id).set_result(slots)

    def _next(self, pool: _Pool, capacity: int) -> tuple[SlotDemand, int] | None:
        """Who runs next. FCFS: the first in line, when it fits. Fair: in the highest class waiting, the request of
        the tenant with the least running per unit of weight (ties: the order's start tags); one that does not fit
        holds up the others (so a large one is not passed forever), but for a tenant with nothing running, which
        may take a burst slot."""
        entries = pool.order.entries()
        if not entries:
            return None
        if not self._limits.fair:
            slots = self._fits(pool, entries[0].demand, capacity, behind=False)
            return None if slots is None else (entries[0].demand, slots)
        top = [entry.demand for entry in entries if entry.key[0] == entries[0].key[0]]
        best = min(top, key=lambda demand: pool.by_tenant[demand.tenant_id] / demand.weight)
        slots = self._fits(pool, best, capacity, behind=False)
        if slots is not None:
            return best, slots
        for entry in entries:
            slots = self._fits(pool, entry.demand, capacity, behind=True)
            if slots is not None:
                return entry.demand, slots
        return None

    def waiting(self) -> dict[PriorityClass, int]:
        counts = dict.fromkeys(PRIORITY_CLASSES, 0)
        for pool in self._pools.values():
            for entry in pool.order.entries():
                counts[entry.demand.priority_class] += 1
        return counts

    async def close(self) -> None:
        return None
