"""The in-process limiter: exact for one gateway process (admission runs without awaiting in between)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.accounting.limits.base import (
    WINDOW_SECONDS,
    BudgetDemand,
    BudgetSnapshot,
    Demand,
    Grant,
    MonthToDate,
    RateDemand,
    Settlement,
    WindowState,
    budget_exceeded,
    rate_headers,
    too_many_concurrent,
    wait_until_fits,
    window_exceeded,
)
from gateway.tenancy.models import Quotas


@dataclass
class _Budget:
    used_tokens: int
    used_cost: int
    reservations: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (tokens, cost)

    @classmethod
    def from_snapshot(cls, snapshot: BudgetSnapshot) -> _Budget:
        reservations = {r.id: (r.tokens, r.cost_nanos) for r in snapshot.open_reservations}
        return cls(snapshot.used_tokens, snapshot.used_cost_nanos, reservations)

    @property
    def committed_tokens(self) -> int:
        return self.used_tokens + sum(tokens for tokens, _ in self.reservations.values())

    @property
    def committed_cost(self) -> int:
        return self.used_cost + sum(cost for _, cost in self.reservations.values())


class _Window:
    """A sliding 60 s window of weighted entries, oldest first, with their running total (a check costs the
    same with ten entries as with a hundred thousand)."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[float, int]] = OrderedDict()  # id -> (admitted at, units)
        self.total = 0

    def add(self, key: str, at: float, units: int) -> None:
        self.entries[key] = (at, units)
        self.total += units

    def update(self, key: str, units: int) -> None:
        """Replace an entry's units (a reservation settled at what was used), if it is still in the window."""
        entry = self.entries.get(key)
        if entry is not None:
            self.entries[key] = (entry[0], units)
            self.total += units - entry[1]

    def prune(self, now: float) -> None:
        horizon = now - WINDOW_SECONDS
        while self.entries and next(iter(self.entries.values()))[0] <= horizon:
            _, (_, units) = self.entries.popitem(last=False)
            self.total -= units

    def state(self, limit: int | None, now: float) -> WindowState | None:
        if limit is None:
            return None
        oldest = next(iter(self.entries.values()), (now, 0))[0]
        return WindowState(limit, self.total, oldest + WINDOW_SECONDS - now)

    def wait(self, state: WindowState, needed: int, now: float) -> float:
        return wait_until_fits(list(self.entries.values()), state.used, state.limit, needed, now)


@dataclass
class _TenantState:
    requests: _Window = field(default_factory=_Window)
    tokens: _Window = field(default_factory=_Window)
    in_flight: set[str] = field(default_factory=set)
    budgets: dict[str, _Budget] = field(default_factory=dict)  # month -> budget

    def windows(self, quotas: Quotas, now: float) -> tuple[WindowState | None, WindowState | None]:
        self.requests.prune(now)
        self.tokens.prune(now)
        return self.requests.state(quotas.requests_per_minute, now), self.tokens.state(quotas.tokens_per_minute, now)


class MemoryLimiter:
    def __init__(self) -> None:
        self._tenants: dict[str, _TenantState] = {}

    def _state(self, tenant_id: str) -> _TenantState:
        return self._tenants.setdefault(tenant_id, _TenantState())

    async def admit(self, tenant_id: str, quotas: Quotas, demand: Demand, month_to_date: MonthToDate) -> Grant:
        state = self._state(tenant_id)
        budget: _Budget | None = None
        if demand.budget is not None and quotas.has_budget:
            month = demand.budget.month
            if month not in state.budgets:
                snapshot = await month_to_date(month)  # the only await: everything below is atomic
                state.budgets.setdefault(month, _Budget.from_snapshot(snapshot))
            budget = state.budgets[month]
        now = time.monotonic()
        requests, tokens = state.windows(quotas, now)
        headers = rate_headers(requests, tokens)
        if demand.rate is not None:
            _check_rate(state, quotas, demand.rate, requests, tokens, headers, now)
        if budget is not None and demand.budget is not None:
            _check_budget(quotas, budget, demand.budget, headers)
            budget.reservations[demand.id] = (demand.budget.tokens, demand.budget.cost_nanos)
        if demand.rate is None:
            return Grant(headers)
        state.requests.add(demand.id, now, demand.rate.requests)
        state.tokens.add(demand.id, now, demand.rate.tokens)
        if demand.rate.slot:
            state.in_flight.add(demand.id)
        return Grant(rate_headers(*state.windows(quotas, now)))

    async def settle(self, tenant_id: str, demand: Demand, used: Settlement) -> None:
        state = self._state(tenant_id)
        state.in_flight.discard(demand.id)
        state.tokens.update(demand.id, used.tokens)
        if demand.budget is not None:
            reserved_in = state.budgets.get(demand.budget.month)
            if reserved_in is not None:
                reserved_in.reservations.pop(demand.id, None)
            charged_to = state.budgets.get(used.month or demand.budget.month)
            if charged_to is not None:
                charged_to.used_tokens += used.tokens
                charged_to.used_cost += used.cost_nanos

    async def renew(self, tenant_id: str, demands: list[Demand]) -> None:
        """Nothing to do: in one process, a slot lives exactly as long as its request."""

    async def headers(self, tenant_id: str, quotas: Quotas) -> dict[str, str]:
        return rate_headers(*self._state(tenant_id).windows(quotas, time.monotonic()))

    async def close(self) -> None:
        self._tenants.clear()


def _check_rate(
    state: _TenantState,
    quotas: Quotas,
    rate: RateDemand,
    requests: WindowState | None,
    tokens: WindowState | None,
    headers: dict[str, str],
    now: float,
) -> None:
    limit = quotas.max_concurrent_requests
    if rate.slot and limit is not None and len(state.in_flight) >= limit:
        raise too_many_concurrent(limit, headers)
    if requests is not None and requests.used + rate.requests > requests.limit:
        wait = state.requests.wait(requests, rate.requests, now)
        raise window_exceeded("rpm", requests.limit, requests.used, rate.requests, wait, headers)
    if tokens is not None and tokens.used + rate.tokens > tokens.limit:
        wait = state.tokens.wait(tokens, rate.tokens, now)
        raise window_exceeded("tpm", tokens.limit, tokens.used, rate.tokens, wait, headers)


def _check_budget(quotas: Quotas, budget: _Budget, demand: BudgetDemand, headers: dict[str, str]) -> None:
    if quotas.monthly_token_budget is not None:
        committed = budget.committed_tokens
        if committed + demand.tokens > quotas.monthly_token_budget:
            raise budget_exceeded(
                "token", quotas.monthly_token_budget, committed, demand.tokens, headers, of_key=quotas.key_scope
            )
    if quotas.monthly_cost_budget_nanos is not None:
        committed = budget.committed_cost
        if committed + demand.cost_nanos > quotas.monthly_cost_budget_nanos:
            raise budget_exceeded(
                "cost", quotas.monthly_cost_budget_nanos, committed, demand.cost_nanos, headers, of_key=quotas.key_scope
            )
