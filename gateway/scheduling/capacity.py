"""How many sequences a model's engine runs at once, read when the scheduler needs it: vLLM's ``max_num_seqs`` for
an engine in this process; times the replicas that serve the model and take requests now, in upstream mode
(each replica runs its own ``max_num_seqs``); or the operator's fixed ``LLMAAS_SCHEDULER_CAPACITY``."""

from __future__ import annotations

from collections.abc import Callable

from engine.backend import BackendStatus
from gateway.scheduling.slots import Capacity


def engine_capacity(max_num_seqs: int, replicas_of: Callable[[], BackendStatus] | None, fixed: int | None) -> Capacity:
    """``replicas_of``: the upstream pool's status (read on each call: replicas come and go); None: the engines of
    this process, whose capacity never changes (nothing is read on the hot path)."""

    def capacity(model: str) -> int:
        if fixed is not None:
            return fixed
        replicas = replicas_of().replicas if replicas_of is not None else ()
        if not replicas:
            return max_num_seqs
        # None available: one slot, so requests reach the pool, which answers 503 at once rather than a wait.
        return max_num_seqs * max(1, sum(1 for r in replicas if r.available and model in r.models))

    return capacity
