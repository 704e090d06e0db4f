"""Admission and metering for one authenticated request (a FastAPI dependency).

A generation route asks the gate to ``admit`` prompt + max completion tokens before it touches the
engine; the returned ``Reservation`` is settled exactly once when the run ends (completed, failed or
abandoned): the limiter replaces the reservation by the real count and the ledger gets one record."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import replace
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from gateway.auth import Principal, PrincipalDep
from gateway.errors import InvalidRequestError
from gateway.generation import RunReport
from gateway.limits import Demand, Grant, Limiter
from gateway.metering import Meter
from gateway.tenancy.models import Quotas
from gateway.tenancy.service import TenancyService, UsageEntry, utcnow

logger = logging.getLogger(__name__)


class BackgroundTasks:
    """Fire-and-forget coroutines kept alive until done, and awaited at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class Reservation:
    def __init__(self, gate: QuotaGate, model: str, demand: Demand, end_user: str | None) -> None:
        self._gate = gate
        self._model = model
        self._demand = demand
        self._end_user = end_user
        self._settled = False

    def settle(self, report: RunReport) -> None:
        """Called once by the generation run when it ends; safe to call from a finally block."""
        if self._settled:
            return
        self._settled = True
        gate = self._gate
        usage = report.usage
        cost = gate.principal.identity.quotas.cost_nanos(self._model, usage.prompt_tokens, usage.completion_tokens)
        gate.meter.record(
            UsageEntry(
                request_id=self._demand.request_id,
                tenant_id=gate.principal.tenant_id,
                key_id=gate.principal.key_id,
                model=self._model,
                kind="inference",
                outcome=report.outcome,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_nanos=cost,
                created_at=utcnow(),
                end_user=self._end_user,
            )
        )
        gate.background.spawn(gate.limiter.settle(gate.principal.tenant_id, self._demand, usage.total_tokens, cost))


class QuotaGate:
    def __init__(
        self,
        request: Request,
        principal: Principal,
        limiter: Limiter,
        meter: Meter,
        service: TenancyService,
        background: BackgroundTasks,
    ) -> None:
        self.request = request
        self.principal = principal
        self.limiter = limiter
        self.meter = meter
        self.service = service
        self.background = background

    def check_max_tokens(self, requested: int | None, param: str) -> None:
        """Refuse a ``max_tokens`` above the tenant's cap."""
        cap = self.principal.identity.quotas.max_tokens_cap
        if cap is not None and requested is not None and requested > cap:
            raise InvalidRequestError(
                f"{param} is {requested}, above this organization's cap of {cap}.",
                param=param,
                code="max_tokens_above_cap",
            )

    def capped(self, max_tokens: int) -> int:
        """An open-ended request generates at most the tenant's cap."""
        cap = self.principal.identity.quotas.max_tokens_cap
        return max_tokens if cap is None else min(max_tokens, cap)

    async def admit(
        self, model: str, request_id: str, prompt_tokens: int, max_completion_tokens: int, end_user: str | None = None
    ) -> Reservation:
        quotas = self.principal.identity.quotas
        cost = quotas.cost_nanos(model, prompt_tokens, max_completion_tokens)
        demand, grant = await self._reserve(quotas, request_id, prompt_tokens + max_completion_tokens, cost)
        self.request.state.response_headers = grant.headers
        return Reservation(self, model, demand, end_user)

    async def admit_training(self, model: str, job_id: str, estimated_tokens: int) -> None:
        """Reserve a fine-tuning job's estimated tokens against the monthly budgets (not the per-minute
        limits); ``training_billing`` settles the real count when the job ends."""
        quotas = self.principal.identity.quotas
        budget_only = replace(quotas, requests_per_minute=None, tokens_per_minute=None, max_concurrent_requests=None)
        await self._reserve(budget_only, job_id, estimated_tokens, quotas.cost_nanos(model, estimated_tokens, 0))

    async def _reserve(self, quotas: Quotas, request_id: str, tokens: int, cost_nanos: int) -> tuple[Demand, Grant]:
        now = utcnow()
        demand = Demand(request_id=request_id, tokens=tokens, cost_nanos=cost_nanos, month=now.strftime("%Y-%m"))
        tenant_id = self.principal.tenant_id

        async def month_to_date() -> tuple[int, int]:
            return await run_in_threadpool(self.service.month_to_date, tenant_id, now)

        return demand, await self.limiter.admit(tenant_id, quotas, demand, month_to_date)


async def get_quota_gate(request: Request, principal: PrincipalDep) -> QuotaGate:
    state = request.app.state
    # Every authenticated response carries the tenant's current rate-limit headers; admission refreshes them.
    request.state.response_headers = await state.limiter.headers(principal.tenant_id, principal.identity.quotas)
    return QuotaGate(request, principal, state.limiter, state.meter, state.tenancy, state.background)


QuotaDep = Annotated[QuotaGate, Depends(get_quota_gate)]
