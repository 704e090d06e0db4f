"""The order in which waiting requests get running slots, as plain bookkeeping (no clock, no I/O).

Fair mode: strict priority between classes, and start-time fair queuing (SFQ) between tenants within a class.
A request of tenant ``t`` with weight ``w`` that needs ``c`` sequences gets the start tag ``S = max(V, F_t)`` and
moves its tenant's finish tag to ``F_t = S + c / w``; ``V``, the class's virtual time, is the start tag of the last
request admitted. The waiting request with the lowest start tag goes first, so a tenant that sent many requests
waits behind one that sent few, each in proportion to its weight, whatever the arrival order.

FCFS mode (fair queuing off): arrival order, whatever the class or tenant."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from gateway.scheduling import class_rank
from gateway.scheduling.slots import SlotDemand


@dataclass(order=True)
class Waiting:
    """One waiting request; sorted by its place in the order."""

    key: tuple[float, ...]
    demand: SlotDemand = field(compare=False)
    start: float = field(compare=False)


class FairOrder:
    """Waiting requests in admission order (``fair``: classes, then start tags; else arrival)."""

    def __init__(self, fair: bool) -> None:
        self.fair = fair
        self._entries: list[Waiting] = []
        self._by_id: dict[str, Waiting] = {}
        self._virtual: dict[int, float] = {}  # class rank -> V
        self._finish: dict[tuple[int, str], float] = {}  # (class rank, tenant) -> F_t
        self._per_tenant: dict[str, int] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Waiting]:
        """The waiting requests, first in line first (a copy: admitting them changes the order)."""
        return list(self._entries)

    def _tag(self, demand: SlotDemand) -> tuple[int, float]:
        """The request's class rank and start tag; its tenant's finish tag moves past it."""
        rank = class_rank(demand.priority_class)
        start = max(self._virtual.get(rank, 0.0), self._finish.get((rank, demand.tenant_id), 0.0))
        self._finish[(rank, demand.tenant_id)] = start + demand.sequences / demand.weight
        return rank, start

    def charge(self, demand: SlotDemand) -> None:
        """A request that runs without waiting: its tenant's share is used all the same."""
        rank, start = self._tag(demand)
        self._virtual[rank] = max(self._virtual.get(rank, 0.0), start)

    def add(self, demand: SlotDemand) -> Waiting:
        self._arrivals += 1
        rank, start = self._tag(demand)
        key = (rank, start, self._arrivals) if self.fair else (self._arrivals,)
        entry = Waiting(key, demand, start)
        bisect.insort(self._entries, entry)
        self._by_id[demand.request_id] = entry
        self._per_tenant[demand.tenant_id] = self._per_tenant.get(demand.tenant_id, 0) + 1
        return entry

    def remove(self, request_id: str, admitted: bool) -> None:
        """Take a request out: ``admitted`` (it runs now: the class's virtual time moves to its start tag), or
        withdrawn (refused, timed out, or its client left)."""
        entry = self._by_id.pop(request_id, None)
        if entry is None:
            return
        self._entries.remove(entry)
        left = self._per_tenant.pop(entry.demand.tenant_id) - 1
        if left:
            self._per_tenant[entry.demand.tenant_id] = left
        rank = class_rank(entry.demand.priority_class)
        if admitted:
            self._virtual[rank] = max(self._virtual.get(rank, 0.0), entry.start)
        self._forget_idle(rank)

    def _forget_idle(self, rank: int) -> None:
        """Finish tags at or below V change nothing (``max(V, F) = V``): drop them, so memory follows the tenants
        that wait, not every tenant ever seen."""
        now = self._virtual.get(rank, 0.0)
        stale = [k for k, f in self._finish.items() if k[0] == rank and f <= now and k[1] not in self._per_tenant]
        for k in stale:
            del self._finish[k]

    def waiting_of(self, tenant_id: str) -> int:
        return self._per_tenant.get(tenant_id, 0)
