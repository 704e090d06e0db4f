"""What every scheduler shares: a request's demand for running slots, the ticket that holds them until the run
ends, the limits on waiting (``LLMAAS_QUEUE_*``) and the refusals (429: this tenant's queue is full; 503: the
server's queue is full, or the request waited past its deadline), each with ``retry-after``.

A request needs one slot per sequence the engine runs for it (prompts x ``n``), as vLLM counts ``max_num_seqs``;
one that needs more than the whole capacity takes all of it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import RateLimited, ServiceUnavailable
from gateway.scheduling import PriorityClass


@dataclass(frozen=True)
class SlotDemand:
    request_id: str
    tenant_id: str
    priority_class: PriorityClass
    weight: int
    """The tenant's share within its class (``tenants.scheduling_weight``; 1 when unset)."""
    sequences: int


@dataclass(frozen=True)
class QueueLimits:
    fair: bool
    """False: first come, first served (no classes, no shares, no burst slots)."""
    max_waiting_per_tenant: int
    max_waiting: int
    wait_seconds: float
    burst_slots: int
    """Sequences beyond the capacity that a tenant with nothing running may take at once, so that one tenant
    never holds every running slot while another waits (the engine runs ``capacity + burst_slots``)."""


class Ticket(Protocol):
    def release(self) -> None:
        """Give the slots back (the run ended); later calls do nothing."""
        ...


class Scheduler(Protocol):
    async def acquire(self, model: str, demand: SlotDemand) -> Ticket:
        """Return once ``demand`` may run on ``model``'s engine, or raise ``TenantQueueFull`` / ``ServerQueueFull``
        / ``QueueTimeout``. Cancelling the call gives up the place at once."""
        ...

    def waiting(self) -> dict[PriorityClass, int]:
        """Requests waiting now, by class (this gateway's)."""
        ...

    async def close(self) -> None: ...


Capacity = Callable[[str], int]
"""How many sequences a model's engine runs at once now (vLLM's ``max_num_seqs``; summed over the replicas that
serve it upstream)."""
WaitObserver = Callable[[PriorityClass, float], None]
"""Told how long each admitted request waited, by class."""


def _retry_after(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, int(seconds * 1000)))}


class TenantQueueFull(RateLimited):
    code = "queue_full"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The server is busy and your organization already has {limit} requests waiting for it; retry shortly.",
            headers=_retry_after(1),
        )


class ServerQueueFull(ServiceUnavailable):
    code = "server_queue_full"

    def __init__(self) -> None:
        super().__init__("The server is busy and its queue is full; retry shortly.", headers=_retry_after(2))


class QueueTimeout(ServiceUnavailable):
    code = "queue_timeout"

    def __init__(self, waited: float) -> None:
        super().__init__(
            f"The server is busy: this request waited {waited:.0f} s for the engine and was not run; retry shortly.",
            headers=_retry_after(2),
        )


class QueueUnavailable(ServiceUnavailable):
    code = "queue_unavailable"

    def __init__(self) -> None:
        super().__init__("The request queue cannot be reached for now; retry shortly.", headers=_retry_after(1))
