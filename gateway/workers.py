"""Work whose cost a tenant controls (checking eval items against a tenant's schema, grading), run off the event
loop in a small pool of worker processes: spawned, so they inherit no engine, socket or GPU state, and the GIL
they hold is not the gateway's, so ``/health`` and every other tenant's requests go on meanwhile.

Each call carries a time budget that the callee keeps (it stops and raises when it runs out); the caller waits a
little longer than the budget and then gives up on the result (:class:`WorkTimedOut`) and kills the pool's
processes (a callee that overran its budget, inside one keyword's work, must not go on holding a worker that every
tenant shares), so no overrun holds a request, a run or a worker. A worker that dies (killed, out of memory) fails
its call, and the pool is made anew in both cases: calls in flight on the old one fail too (:class:`WorkFailed`)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")
GRACE_SECONDS = 5.0
"""How much longer than its budget a call is awaited (a worker's start, the transfer of its arguments)."""


class WorkTimedOut(Exception):
    """A call did not answer within its budget (and the grace)."""


class WorkFailed(Exception):
    """A worker process died during the call."""


class Workers:
    def __init__(self, processes: int) -> None:
        self._processes = processes
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self._processes, mp_context=multiprocessing.get_context("spawn"))

    async def call(self, function: Callable[..., T], *args: Any, budget: float) -> T:
        """``function(*args)`` in a worker; ``function`` is expected to keep to ``budget`` seconds itself."""
        pool = self._pool
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(pool, function, *args), budget + GRACE_SECONDS
            )
        except TimeoutError:
            logger.error("a worker overran its budget of %.1f s; its processes are killed", budget)
            self._replace(pool)
            raise WorkTimedOut from None
        except BrokenProcessPool:
            logger.error("a worker process died; starting the pool anew")
            self._replace(pool)
            raise WorkFailed from None

    def _replace(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = self._new_pool()
            _kill(pool)

    def close(self) -> None:
        _kill(self._pool)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's processes now, busy or not (``shutdown`` alone waits for a busy one, even at exit)."""
    for process in list((pool._processes or {}).values()):  # the executor offers no public kill
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
