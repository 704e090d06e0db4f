"""Work whose cost a tenant controls (checking eval items against a tenant's schema, grading), run off the event
loop in a small pool of worker processes: spawned, so they inherit no engine, socket or GPU state, and the GIL
they hold is not the gateway's, so ``/health`` and every other tenant's requests go on meanwhile.

Each call carries a time budget that the callee keeps (it stops and raises when it runs out); the caller waits a
little longer than the budget and then gives up on the result (:class:`WorkTimedOut`), so no overrun holds a
request or a run. A worker that dies (killed, out of memory) fails its call and the pool is made anew."""

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
            raise WorkTimedOut from None
        except BrokenProcessPool:
            logger.error("a worker process died; starting the pool anew")
            if self._pool is pool:
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            raise WorkFailed from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
