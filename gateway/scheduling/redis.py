"""The scheduler shared by every gateway on one Redis in front of one replica pool (upstream mode): each model's
running slots, each tenant's share of them and the waiting requests of all gateways live in Redis
(``gateway.scheduling.redis_scripts``), so the order is fair across gateways, not only within each.

A gateway enqueues its request (admitted at once if it fits), then, while it has requests waiting, polls every
``poll_seconds``: one script that admits what fits and says which of its requests run now (and renews the leases
of those it runs, so a gateway that dies frees its slots after ``lease_seconds``). A request that ends, times out
or whose client leaves takes itself out in one script, which admits the next."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.scheduling import PRIORITY_CLASSES, PriorityClass, class_rank
from gateway.scheduling import redis_scripts as scripts
from gateway.scheduling.slots import (
    Capacity,
    QueueLimits,
    QueueTimeout,
    QueueUnavailable,
    ServerQueueFull,
    SlotDemand,
    TenantQueueFull,
    WaitObserver,
)

logger = logging.getLogger(__name__)
_KEYS = ("run", "runv", "trun", "waitv", "waitn", "deadline", "vt", "fin", "wait:0", "wait:1", "wait:fcfs", "arrivals")


@dataclass
class _Local:
    """This gateway's requests on one model: those waiting (by id, with their class) and those running."""

    waiting: dict[str, tuple[PriorityClass, asyncio.Future[None]]] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)


class _Held:
    def __init__(self, scheduler: RedisScheduler, model: str, request_id: str) -> None:
        self._scheduler = scheduler
        self._model = model
        self._request_id = request_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler.leave_soon(self._model, self._request_id)


class RedisScheduler:
    def __init__(
        self,
        url: str,
        limits: QueueLimits,
        capacity: Capacity,
        observe_wait: WaitObserver,
        *,
        lease_seconds: float,
        poll_seconds: float = 0.02,
    ) -> None:
        self._redis: Redis = Redis.from_url(url)
        self._limits = limits
        self._capacity = capacity
        self._observe_wait = observe_wait
        self._lease_ms = int(lease_seconds * 1000)
        self._poll_seconds = poll_seconds
        self._enqueue = self._redis.register_script(scripts.ENQUEUE)
        self._poll = self._redis.register_script(scripts.POLL)
        self._leave = self._redis.register_script(scripts.LEAVE)
        self._models: dict[str, _Local] = {}
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @staticmethod
    def _keys(model: str) -> list[str]:
        return [f"llmaas:sched:{{{model}}}:{name}" for name in _KEYS]

    def _pool_args(self, model: str) -> list[int]:
        capacity = max(1, self._capacity(model))
        return [capacity, self._limits.burst_slots, int(self._limits.fair), self._lease_ms]

    async def acquire(self, model: str, demand: SlotDemand) -> _Held:
        limits = self._limits
        local = self._models.setdefault(model, _Local())
        started = time.monotonic()
        args: list[str | int] = [
            *self._pool_args(model),
            demand.request_id,
            demand.tenant_id,
            class_rank(demand.priority_class),
            demand.weight,
            demand.sequences,
            int(limits.wait_seconds * 1000),
            limits.max_waiting_per_tenant,
            limits.max_waiting,
        ]
        try:
            state = (await self._enqueue(keys=self._keys(model), args=args)).decode()
        except BaseException as exc:
            # Cancelled (the client left) or failed after the script may have run: take it out either way.
            self.leave_soon(model, demand.request_id)
            if isinstance(exc, RedisError):
                raise QueueUnavailable() from exc
            raise
        if state == "tenant_full":
            raise TenantQueueFull(limits.max_waiting_per_tenant)
        if state == "server_full":
            raise ServerQueueFull()
        if state == "waiting":
            admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            local.waiting[demand.request_id] = (demand.priority_class, admitted)
            self._ensure_polling()
            try:
                await asyncio.wait_for(asyncio.shield(admitted), limits.wait_seconds)
            except BaseException as exc:
                local.waiting.pop(demand.request_id, None)
                self.leave_soon(model, demand.request_id)  # waiting or admitted meanwhile: out either way
                if isinstance(exc, TimeoutError):
                    raise QueueTimeout(time.monotonic() - started) from None
                raise
        local.running.add(demand.request_id)
        self._ensure_polling()
        self._observe_wait(demand.priority_class, time.monotonic() - started)
        return _Held(self, model, demand.request_id)

    def leave_soon(self, model: str, request_id: str) -> None:
        """Take the request out (waiting or running) in the background: called from a run's end, not awaited."""
        self._models[model].running.discard(request_id)
        if self._closed:  # shutting down: its lease or deadline takes it out
            return
        task = asyncio.ensure_future(self._leave(keys=self._keys(model), args=[*self._pool_args(model), request_id]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ensure_polling(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._keep_polling())

    async def _keep_polling(self) -> None:
        """While this gateway has requests waiting or running: admit, learn who runs, renew leases."""
        renewed = time.monotonic()
        while any(local.waiting or local.running for local in self._models.values()):
            renew = time.monotonic() - renewed > self._lease_ms / 3000
            for model, local in list(self._models.items()):
                if local.waiting or (renew and local.running):
                    try:
                        await self._poll_model(model, local, renew)
                    except RedisError:  # Redis away for a moment: the waiting wait on (until their deadline)
                        logger.warning("polling the shared queue of %s failed", model, exc_info=True)
            renewed = time.monotonic() if renew else renewed
            await asyncio.sleep(self._poll_seconds)

    async def _poll_model(self, model: str, local: _Local, renew: bool) -> None:
        waiting = list(local.waiting)
        running = list(local.running) if renew else []
        args: list[str | int] = [*self._pool_args(model), len(waiting), *waiting, *running]
        states = await self._poll(keys=self._keys(model), args=args)
        for request_id, state in zip(waiting, states, strict=True):
            if state == 1 and request_id in local.waiting:
                local.waiting.pop(request_id)[1].set_result(None)

    def waiting(self) -> dict[PriorityClass, int]:
        counts = dict.fromkeys(PRIORITY_CLASSES, 0)
        for local in self._models.values():
            for priority_class, _ in local.waiting.values():
                counts[priority_class] += 1
        return counts

    async def close(self) -> None:
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()
