"""The in-process limiter: exact for one gateway process (admission runs without awaiting in between)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.limits.base import (
    WINDOW_SECONDS,
    Demand,
    Grant,
    MonthToDate,
    WindowState,
    budget_exceeded,
    rate_headers,
    too_many_concurrent,
    too_many_requests,
    too_many_tokens,
)
from gateway.tenancy.models import Quotas


@dataclass
class _Budget:
    used_tokens: int
    used_cost: int
    reserved_tokens: int = 0
    reserved_cost: int = 0
    reservations: set[str] = field(default_factory=set)


@dataclass
class _TenantState:
    requests: OrderedDict[str, float] = field(default_factory=OrderedDict)  # request id -> admitted at
    tokens: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)  # id -> (at, tokens)
    in_flight: set[str] = field(default_factory=set)
    budgets: dict[str, _Budget] = field(default_factory=dict)  # month -> budget

    def prune(self, now: float) -> None:
        horizon = now - WINDOW_SECONDS
        while self.requests and next(iter(self.requests.values())) <= horizon:
            self.requests.popitem(last=False)
        while self.tokens and next(iter(self.tokens.values()))[0] <= horizon:
            self.tokens.popitem(last=False)

    def request_window(self, limit: int | None, now: float) -> WindowState | None:
        if limit is None:
            return None
        oldest = next(iter(self.requests.values()), now)
        return WindowState(limit, len(self.requests), oldest + WINDOW_SECONDS - now)

    def token_window(self, limit: int | None, now: float) -> WindowState | None:
        if limit is None:
            return None
        oldest = next(iter(self.tokens.values()), (now, 0))[0]
        used = sum(tokens for _, tokens in self.tokens.values())
        return WindowState(limit, used, oldest + WINDOW_SECONDS - now)

    def wait_for_tokens(self, limit: int, needed: int, now: float) -> float:
        """Seconds until enough tokens have left the window for ``needed`` more to fit."""
        used = sum(tokens for _, tokens in self.tokens.values())
        for at, tokens in self.tokens.values():
            used -= tokens
            if used + needed <= limit:
                return at + WINDOW_SECONDS - now
        return WINDOW_SECONDS


class MemoryLimiter:
    def __init__(self) -> None:
        self._tenants: dict[str, _TenantState] = {}

    def _state(self, tenant_id: str) -> _TenantState:
        return self._tenants.setdefault(tenant_id, _TenantState())

    async def admit(self, tenant_id: str, quotas: Quotas, demand: Demand, month_to_date: MonthToDate) -> Grant:
        state = self._state(tenant_id)
        budget = state.budgets.get(demand.month)
        if budget is None and quotas.has_budget:
            tokens, cost = await month_to_date()  # the only await: everything below is atomic
            budget = state.budgets.setdefault(demand.month, _Budget(tokens, cost))
        now = time.monotonic()
        state.prune(now)
        requests = state.request_window(quotas.requests_per_minute, now)
        tokens_window = state.token_window(quotas.tokens_per_minute, now)
        headers = rate_headers(requests, tokens_window)

        limit = quotas.max_concurrent_requests
        if limit is not None and len(state.in_flight) >= limit:
            raise too_many_concurrent(limit, headers)
        if requests is not None and requests.used + 1 > requests.limit:
            raise too_many_requests(requests.limit, requests.used, requests.reset_seconds, headers)
        if tokens_window is not None and tokens_window.used + demand.tokens > tokens_window.limit:
            wait = state.wait_for_tokens(tokens_window.limit, demand.tokens, now)
            raise too_many_tokens(tokens_window.limit, tokens_window.used, demand.tokens, wait, headers)
        if budget is not None:
            _check_budget(quotas, budget, demand, headers)
            budget.reserved_tokens += demand.tokens
            budget.reserved_cost += demand.cost_nanos
            budget.reservations.add(demand.request_id)

        state.requests[demand.request_id] = now
        state.tokens[demand.request_id] = (now, demand.tokens)
        state.in_flight.add(demand.request_id)
        after = rate_headers(
            state.request_window(quotas.requests_per_minute, now), state.token_window(quotas.tokens_per_minute, now)
        )
        return Grant(after)

    async def settle(self, tenant_id: str, demand: Demand, tokens: int, cost_nanos: int) -> None:
        state = self._state(tenant_id)
        state.in_flight.discard(demand.request_id)
        if demand.request_id in state.tokens:
            at, _ = state.tokens[demand.request_id]
            state.tokens[demand.request_id] = (at, tokens)
        budget = state.budgets.get(demand.month)
        if budget is not None:
            if demand.request_id in budget.reservations:  # absent if made before this process started
                budget.reservations.discard(demand.request_id)
                budget.reserved_tokens -= demand.tokens
                budget.reserved_cost -= demand.cost_nanos
            budget.used_tokens += tokens
            budget.used_cost += cost_nanos

    async def headers(self, tenant_id: str, quotas: Quotas) -> dict[str, str]:
        state = self._state(tenant_id)
        now = time.monotonic()
        state.prune(now)
        return rate_headers(
            state.request_window(quotas.requests_per_minute, now), state.token_window(quotas.tokens_per_minute, now)
        )

    async def close(self) -> None:
        self._tenants.clear()


def _check_budget(quotas: Quotas, budget: _Budget, demand: Demand, headers: dict[str, str]) -> None:
    if quotas.monthly_token_budget is not None:
        committed = budget.used_tokens + budget.reserved_tokens
        if committed + demand.tokens > quotas.monthly_token_budget:
            raise budget_exceeded("token", quotas.monthly_token_budget, committed, demand.tokens, headers)
    if quotas.monthly_cost_budget_nanos is not None:
        committed = budget.used_cost + budget.reserved_cost
        if committed + demand.cost_nanos > quotas.monthly_cost_budget_nanos:
            raise budget_exceeded("cost", quotas.monthly_cost_budget_nanos, committed, demand.cost_nanos, headers)
