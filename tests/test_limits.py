"""The limiters' exactness rules, on the in-process limiter and on real Redis (two limiter instances stand for
two gateway processes sharing one Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.errors import QuotaExceeded, RateLimited
from gateway.limits import Demand, Limiter, MemoryLimiter, RedisLimiter
from gateway.tenancy.models import Quotas

REDIS_URL = "redis://127.0.0.1:6379/15"
MONTH = "2026-11"


async def nothing_used() -> tuple[int, int]:
    return 0, 0


def demand(tokens: int = 10, cost: int = 0) -> Demand:
    return Demand(request_id=uuid.uuid4().hex, tokens=tokens, cost_nanos=cost, month=MONTH)


@pytest.fixture(params=["memory", "redis"])
async def limiters(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Limiter]]:
    """A factory: the in-process limiter (one shared instance), or new Redis limiters on one Redis."""
    made: list[Limiter] = []
    shared = MemoryLimiter()

    def make() -> Limiter:
        limiter: Limiter = shared if request.param == "memory" else RedisLimiter(REDIS_URL)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def admit_all(limiters: list[Limiter], tenant_id: str, quotas: Quotas, demands: list[Demand]) -> list[bool]:
    async def one(i: int, d: Demand) -> bool:
        try:
            await limiters[i % len(limiters)].admit(tenant_id, quotas, d, nothing_used)
            return True
        except (RateLimited, QuotaExceeded):
            return False

    return list(await asyncio.gather(*(one(i, d) for i, d in enumerate(demands))))


async def test_rpm_admits_exactly_the_limit_under_concurrency(limiters: Callable[[], Limiter]) -> None:
    pool = [limiters(), limiters()]
    admitted = await admit_all(pool, tenant(), Quotas(requests_per_minute=50), [demand() for _ in range(200)])
    assert sum(admitted) == 50


async def test_rpm_rejection_says_when_to_retry(limiters: Callable[[], Limiter]) -> None:
    limiter, tenant_id, quotas = limiters(), tenant(), Quotas(requests_per_minute=2)
    for _ in range(2):
        grant = await limiter.admit(tenant_id, quotas, demand(), nothing_used)
    assert grant.headers["x-ratelimit-limit-requests"] == "2"
    assert grant.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited) as info:
        await limiter.admit(tenant_id, quotas, demand(), nothing_used)
    assert info.value.code == "rate_limit_exceeded"
    assert 59_000 <= int(info.value.headers["retry-after-ms"]) <= 60_000
    assert info.value.headers["retry-after"] == "60"


async def test_tpm_reserves_then_settles_to_the_real_count(limiters: Callable[[], Limiter]) -> None:
    limiter, tenant_id, quotas = limiters(), tenant(), Quotas(tokens_per_minute=100)
    first = demand(tokens=60)
    await limiter.admit(tenant_id, quotas, first, nothing_used)
    with pytest.raises(RateLimited):
        await limiter.admit(tenant_id, quotas, demand(tokens=60), nothing_used)
    await limiter.settle(tenant_id, first, tokens=20, cost_nanos=0)  # it used 20 of its 60
    grant = await limiter.admit(tenant_id, quotas, demand(tokens=60), nothing_used)
    assert grant.headers["x-ratelimit-remaining-tokens"] == "20"
    with pytest.raises(RateLimited) as too_large:
        await limiter.admit(tenant_id, quotas, demand(tokens=101), nothing_used)
    assert too_large.value.headers["x-should-retry"] == "false"


async def test_tpm_never_exceeded_under_concurrency(limiters: Callable[[], Limiter]) -> None:
    pool = [limiters(), limiters()]
    admitted = await admit_all(pool, tenant(), Quotas(tokens_per_minute=1000), [demand(37) for _ in range(100)])
    assert sum(admitted) == 1000 // 37


async def test_concurrency_slots_free_on_settle(limiters: Callable[[], Limiter]) -> None:
    limiter, tenant_id, quotas = limiters(), tenant(), Quotas(max_concurrent_requests=2)
    held = [demand(), demand()]
    for d in held:
        await limiter.admit(tenant_id, quotas, d, nothing_used)
    with pytest.raises(RateLimited):
        await limiter.admit(tenant_id, quotas, demand(), nothing_used)
    await limiter.settle(tenant_id, held[0], tokens=5, cost_nanos=0)
    await limiter.admit(tenant_id, quotas, demand(), nothing_used)


async def test_token_budget_never_exceeded_under_concurrency(limiters: Callable[[], Limiter]) -> None:
    pool = [limiters(), limiters()]
    tenant_id, quotas = tenant(), Quotas(monthly_token_budget=1000)

    async def already_used() -> tuple[int, int]:
        return 300, 0

    async def one(i: int) -> int:
        d = demand(tokens=50)
        try:
            await pool[i % 2].admit(tenant_id, quotas, d, already_used)
        except QuotaExceeded as exc:
            assert exc.headers["x-should-retry"] == "false"
            return 0
        await asyncio.sleep(0.01)
        await pool[i % 2].settle(tenant_id, d, tokens=30, cost_nanos=0)
        return 30

    used = sum(await asyncio.gather(*(one(i) for i in range(100))))
    assert 300 + used <= 1000
    # Settled requests used 30 of their 50: what they gave back was admitted again, up to the budget.
    assert used >= (700 // 50) * 30


async def test_cost_budget(limiters: Callable[[], Limiter]) -> None:
    limiter, tenant_id = limiters(), tenant()
    quotas = Quotas(monthly_cost_budget_nanos=1_000)
    first = demand(cost=600)
    await limiter.admit(tenant_id, quotas, first, nothing_used)
    with pytest.raises(QuotaExceeded) as info:
        await limiter.admit(tenant_id, quotas, demand(cost=600), nothing_used)
    assert info.value.code == "insufficient_quota"
    await limiter.settle(tenant_id, first, tokens=10, cost_nanos=100)
    await limiter.admit(tenant_id, quotas, demand(cost=600), nothing_used)


async def test_budget_starts_from_the_ledger(limiters: Callable[[], Limiter]) -> None:
    limiter, tenant_id, quotas = limiters(), tenant(), Quotas(monthly_token_budget=100)
    calls = 0

    async def ledger() -> tuple[int, int]:
        nonlocal calls
        calls += 1
        return 95, 0

    await limiter.admit(tenant_id, quotas, demand(tokens=5), ledger)
    with pytest.raises(QuotaExceeded):
        await limiter.admit(tenant_id, quotas, demand(tokens=1), ledger)
    assert calls == 1


async def test_unlimited_tenant_gets_no_rate_headers(limiters: Callable[[], Limiter]) -> None:
    grant = await limiters().admit(tenant(), Quotas(), demand(), nothing_used)
    assert grant.headers == {}


async def test_redis_reservation_of_a_dead_gateway_expires() -> None:
    tenant_id, quotas = tenant(), Quotas(max_concurrent_requests=1, monthly_token_budget=100)
    dead = RedisLimiter(REDIS_URL, lease_seconds=0.2)
    await dead.admit(tenant_id, quotas, demand(tokens=90), nothing_used)  # never settled: the gateway "died"
    alive = RedisLimiter(REDIS_URL, lease_seconds=0.2)
    with pytest.raises(RateLimited):
        await alive.admit(tenant_id, quotas, demand(tokens=50), nothing_used)
    await asyncio.sleep(0.3)
    await alive.admit(tenant_id, quotas, demand(tokens=50), nothing_used)
    await dead.close()
    await alive.close()
