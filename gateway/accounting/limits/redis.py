"""The Redis limiter: the same rules as the in-process one, shared by every gateway process on one Redis.

Each admission and settlement is one Lua script, so concurrent requests on any number of gateways are
checked and recorded atomically. Time comes from Redis (``TIME``), not from the gateways' clocks.
Reservations and concurrency slots carry a lease: a gateway killed mid-request frees them after the lease.

Keys per tenant (hash-tagged so one tenant's keys share a cluster slot):
    llmaas:{t}:req       zset  demand id -> admitted at             (RPM window)
    llmaas:{t}:reqv      hash  demand id -> requests it counts; "~total" -> their sum (kept as entries come and go)
    llmaas:{t}:tok       zset  demand id -> admitted at             (TPM window)
    llmaas:{t}:tokv      hash  demand id -> tokens (reserved, then actual); "~total" -> their sum
    llmaas:{t}:inflight  zset  demand id -> lease expiry            (concurrency slots)
    llmaas:{t}:resv      hash  demand id -> "tokens cost expiry budget-key"   (budget reservations)
    llmaas:{t}:budget:M  hash  used_t, used_c, resv_t, resv_c        (month M)
    llmaas:{t}:settled:D string  set once demand D is settled (for an hour): a retried settlement counts once

A script the client retries because its reply was lost does nothing twice: an admission finds its demand
recorded, a settlement its marker. A running request's lease is renewed (``renew``) while it runs.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from gateway.accounting.limits import redis_scripts as scripts
from gateway.accounting.limits.base import (
    BudgetDemand,
    Demand,
    Grant,
    MonthToDate,
    RateDemand,
    Settlement,
    WindowState,
    budget_exceeded,
    rate_headers,
    too_many_concurrent,
    window_exceeded,
)
from gateway.errors import APIError, ServiceUnavailable
from gateway.tenancy.models import Quotas


def _rejection(status: str, result: list[Any], quotas: Quotas, demand: Demand, headers: dict[str, str]) -> APIError:
    """The error for what the admission script refused."""
    rate = demand.rate or RateDemand(0, 0, False)
    budget = demand.budget or BudgetDemand(0, 0, "-")
    if status == "concurrency":
        return too_many_concurrent(quotas.max_concurrent_requests or 0, headers)
    if status == "rpm":
        used, wait = int(result[1][0]), float(result[2])
        return window_exceeded("rpm", quotas.requests_per_minute or 0, used, rate.requests, wait, headers)
    if status == "tpm":
        used, wait = int(result[1][2]), float(result[2])
        return window_exceeded("tpm", quotas.tokens_per_minute or 0, used, rate.tokens, wait, headers)
    committed, of_key = int(float(result[2])), quotas.key_scope
    if status == "budget_tokens":
        limit = quotas.monthly_token_budget or 0
        return budget_exceeded("token", limit, committed, budget.tokens, headers, of_key=of_key)
    return budget_exceeded(
        "cost", quotas.monthly_cost_budget_nanos or 0, committed, budget.cost_nanos, headers, of_key=of_key
    )


_UNLIMITED = -1
_BUDGET_TTL_SECONDS = 40 * 24 * 3600


def _limit(value: int | None) -> int:
    return _UNLIMITED if value is None else value


class RedisLimiter:
    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = 900.0,
        open_reservation_lease_seconds: float = 7 * 24 * 3600,
        window_seconds: float = 60.0,
    ) -> None:
        self._redis: Redis = Redis.from_url(url)
        self._lease = lease_seconds
        self._open_lease = open_reservation_lease_seconds
        self._window = window_seconds
        self._admit = self._redis.register_script(scripts.ADMIT)
        self._init_budget = self._redis.register_script(scripts.INIT_BUDGET)
        self._settle = self._redis.register_script(scripts.SETTLE)
        self._renew = self._redis.register_script(scripts.RENEW)
        self._peek = self._redis.register_script(scripts.PEEK)

    @property
    def lease_seconds(self) -> float:
        return self._lease

    @staticmethod
    def _key(tenant_id: str, name: str) -> str:
        return f"llmaas:{{{tenant_id}}}:{name}"

    def _window_keys(self, tenant_id: str) -> list[str]:
        return [self._key(tenant_id, name) for name in ("req", "reqv", "tok", "tokv")]

    def _headers(self, quotas: Quotas, state: list[Any]) -> dict[str, str]:
        req_used, req_reset, tok_used, tok_reset = int(state[0]), float(state[1]), int(state[2]), float(state[3])
        rpm, tpm = quotas.requests_per_minute, quotas.tokens_per_minute
        requests = None if rpm is None else WindowState(rpm, req_used, req_reset)
        tokens = None if tpm is None else WindowState(tpm, tok_used, tok_reset)
        return rate_headers(requests, tokens)

    async def admit(self, tenant_id: str, quotas: Quotas, demand: Demand, month_to_date: MonthToDate) -> Grant:
        rate, budget = demand.rate, demand.budget
        month = budget.month if budget is not None else "-"
        budget_key = self._key(tenant_id, f"budget:{month}")
        resv = self._key(tenant_id, "resv")
        lease = demand.lease_seconds or self._lease
        keys = [*self._window_keys(tenant_id), self._key(tenant_id, "inflight"), resv, budget_key]
        args: list[str | int | float] = [
            demand.id,
            int(rate is not None),
            rate.requests if rate else 0,
            rate.tokens if rate else 0,
            int(bool(rate and rate.slot)),
            int(budget is not None),
            budget.tokens if budget else 0,
            budget.cost_nanos if budget else 0,
            _limit(quotas.requests_per_minute),
            _limit(quotas.tokens_per_minute),
            _limit(quotas.max_concurrent_requests),
            _limit(quotas.monthly_token_budget),
            _limit(quotas.monthly_cost_budget_nanos),
            lease,
            self._window,
        ]
        result = await self._admit(keys=keys, args=args)
        loads = 0
        while result[0] == b"init":  # the month's budget is not in Redis (yet, or any more): load it from the ledger
            if loads == 3:
                raise ServiceUnavailable("The budget could not be loaded; retry shortly.", code="budget_unavailable")
            loads += 1
            snapshot = await month_to_date(month)
            opened = [value for r in snapshot.open_reservations for value in (r.id, r.tokens, r.cost_nanos)]
            init_args = [snapshot.used_tokens, snapshot.used_cost_nanos, _BUDGET_TTL_SECONDS, self._open_lease]
            await self._init_budget(keys=[budget_key, resv], args=[*init_args, *opened])
            result = await self._admit(keys=keys, args=args)
        status = result[0].decode()
        headers = self._headers(quotas, result[1])
        if status == "ok":
            return Grant(headers)
        raise _rejection(status, result, quotas, demand, headers)

    async def settle(self, tenant_id: str, demand: Demand, used: Settlement) -> None:
        month = used.month or (demand.budget.month if demand.budget else "-")
        keys = [
            self._key(tenant_id, "tokv"),
            self._key(tenant_id, "inflight"),
            self._key(tenant_id, "resv"),
            self._key(tenant_id, f"budget:{month}"),
            self._key(tenant_id, f"settled:{demand.id}"),
        ]
        await self._settle(keys=keys, args=[demand.id, used.tokens, used.cost_nanos])

    async def renew(self, tenant_id: str, demands: list[Demand]) -> None:
        keys = [self._key(tenant_id, "inflight"), self._key(tenant_id, "resv")]
        await self._renew(keys=keys, args=[self._lease, *(demand.id for demand in demands)])

    async def headers(self, tenant_id: str, quotas: Quotas) -> dict[str, str]:
        state = await self._peek(keys=self._window_keys(tenant_id), args=[self._window])
        return self._headers(quotas, state)

    async def close(self) -> None:
        await self._redis.aclose()
