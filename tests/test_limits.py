"""The limiters' exactness rules, on the in-process limiter and on real Redis (two limiter instances stand for
two gateway processes sharing one Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.accounting.limits import (
    BudgetDemand,
    BudgetSnapshot,
    Demand,
    Limiter,
    MemoryLimiter,
    OpenReservation,
    RateDemand,
    RedisLimiter,
    Settlement,
)
from gateway.errors import QuotaExceeded, RateLimited
from gateway.tenancy.models import Quotas
from tests.support.databases import REDIS_URL

MONTH = "2026-11"


async def nothing_used(month: str) -> BudgetSnapshot:
    return BudgetSnapshot(0, 0)


def demand(tokens: int = 10, cost: int = 0, requests: int = 1) -> Demand:
    """An inference request: rate and budget."""
    return Demand(
        uuid.uuid4().hex,
        rate=RateDemand(requests=requests, tokens=tokens),
        budget=BudgetDemand(tokens, cost, MONTH),
    )


def spent(tokens: int, cost: int = 0) -> Settlement:
    return Settlement(tokens, cost)


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
    await limiter.settle(tenant_id, first, spent(20))  # it used 20 of its 60
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
    await limiter.settle(tenant_id, held[0], spent(5))
    await limiter.admit(tenant_id, quotas, demand(), nothing_used)


async def test_token_budget_never_exceeded_under_concurrency(limiters: Callable[[], Limiter]) -> None:
    pool = [limiters(), limiters()]
    tenant_id, quotas = tenant(), Quotas(monthly_token_budget=1000)

    async def already_used(month: str) -> BudgetSnapshot:
        return BudgetSnapshot(300, 0)

    async def one(i: int) -> int:
        d = demand(tokens=50)
        try:
            await pool[i % 2].admit(tenant_id, quotas, d, already_used)
        except QuotaExceeded as exc:
            assert exc.headers["x-should-retry"] == "false"
            return 0
        await asyncio.sleep(0.01)
        await pool[i % 2].settle(tenant_id, d, spent(30))
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
    await limiter.settle(tenant_id, first, spent(10, 100))
    await limiter.admit(tenant_id, quotas, demand(cost=600), nothing_used)


async def test_budget_starts_from_the_ledger(limiters: Callable[[], Limiter]) -> None:
    limiter, tenant_id, quotas = limiters(), tenant(), Quotas(monthly_token_budget=100)
    calls = 0

    async def ledger(month: str) -> BudgetSnapshot:
        nonlocal calls
        calls += 1
        assert month == MONTH
        return BudgetSnapshot(95, 0)

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


async def test_one_request_counts_once_per_prompt_against_rpm(limiters: Callable[[], Limiter]) -> None:
    limiter, tenant_id, quotas = limiters(), tenant(), Quotas(requests_per_minute=10)
    await limiter.admit(tenant_id, quotas, demand(requests=8), nothing_used)
    with pytest.raises(RateLimited) as info:
        await limiter.admit(tenant_id, quotas, demand(requests=3), nothing_used)
    assert "used 8, requested 3" in info.value.message
    with pytest.raises(RateLimited) as too_large:
        await limiter.admit(tenant_id, quotas, demand(requests=11), nothing_used)
    assert too_large.value.headers["x-should-retry"] == "false"
    await limiter.admit(tenant_id, quotas, demand(requests=2), nothing_used)


async def test_a_budget_only_demand_takes_no_slot_and_no_tpm(limiters: Callable[[], Limiter]) -> None:
    """A fine-tuning job reserves budget only: the tenant's inference keeps its slots and its TPM window."""
    limiter, tenant_id = limiters(), tenant()
    quotas = Quotas(max_concurrent_requests=1, tokens_per_minute=100, monthly_token_budget=10_000)
    job = Demand("ftjob-1", budget=BudgetDemand(5_000, 0, MONTH), lease_seconds=3600)
    grant = await limiter.admit(tenant_id, quotas, job, nothing_used)
    assert grant.headers["x-ratelimit-remaining-tokens"] == "100"
    await limiter.admit(tenant_id, quotas, demand(tokens=90), nothing_used)  # the one slot, most of the TPM
    with pytest.raises(QuotaExceeded):  # but the job's reservation counts against the budget
        await limiter.admit(tenant_id, quotas, Demand("ftjob-2", budget=BudgetDemand(4_950, 0, MONTH)), nothing_used)


async def test_an_upload_takes_one_rpm_unit_and_no_slot(limiters: Callable[[], Limiter]) -> None:
    limiter, tenant_id = limiters(), tenant()
    quotas = Quotas(requests_per_minute=2, max_concurrent_requests=1)
    upload = Demand(uuid.uuid4().hex, rate=RateDemand(requests=1, tokens=0, slot=False))
    await limiter.admit(tenant_id, quotas, upload, nothing_used)
    await limiter.admit(tenant_id, quotas, demand(), nothing_used)  # the slot is still free
    with pytest.raises(RateLimited):
        await limiter.admit(tenant_id, quotas, Demand(uuid.uuid4().hex, rate=RateDemand(1, 0, False)), nothing_used)


async def test_open_reservations_from_the_database_count_and_are_released(limiters: Callable[[], Limiter]) -> None:
    """A limiter that starts a month (a restarted gateway) takes over the reservations of running jobs."""
    limiter, tenant_id, quotas = limiters(), tenant(), Quotas(monthly_token_budget=1_000)
    job_id = f"ftjob-{uuid.uuid4().hex[:8]}"

    async def snapshot(month: str) -> BudgetSnapshot:
        return BudgetSnapshot(100, 0, (OpenReservation(job_id, 800, 0),))

    with pytest.raises(QuotaExceeded):
        await limiter.admit(tenant_id, quotas, demand(tokens=150), snapshot)
    job = Demand(job_id, budget=BudgetDemand(800, 0, MONTH))
    await limiter.settle(tenant_id, job, Settlement(300, 0))  # the job ended, charged 300
    await limiter.admit(tenant_id, quotas, demand(tokens=600), snapshot)  # 100 + 300 + 600 = 1000
    with pytest.raises(QuotaExceeded):
        await limiter.admit(tenant_id, quotas, demand(tokens=1), snapshot)


async def test_a_charge_lands_in_its_own_month(limiters: Callable[[], Limiter]) -> None:
    limiter, tenant_id, quotas = limiters(), tenant(), Quotas(monthly_token_budget=1_000)
    job = Demand(f"ftjob-{uuid.uuid4().hex[:8]}", budget=BudgetDemand(500, 0, "2026-10"))
    await limiter.admit(tenant_id, quotas, job, nothing_used)
    await limiter.admit(tenant_id, quotas, demand(tokens=1), nothing_used)  # starts November's budget
    await limiter.settle(tenant_id, job, Settlement(700, 0, month=MONTH))  # reserved in October, ends now
    with pytest.raises(QuotaExceeded):
        await limiter.admit(tenant_id, quotas, demand(tokens=300), nothing_used)  # 1 + 700 + 300 > 1000
    october = Demand(uuid.uuid4().hex, budget=BudgetDemand(1_000, 0, "2026-10"))
    await limiter.admit(tenant_id, quotas, october, nothing_used)  # October's reservation was given back


async def test_a_redis_script_run_again_does_nothing_twice() -> None:
    """redis-py retries a command whose reply was lost: the admission and the settlement must count once."""
    limiter, tenant_id = RedisLimiter(REDIS_URL), tenant()
    quotas = Quotas(max_concurrent_requests=1, monthly_token_budget=100)
    held = demand(tokens=60)
    await limiter.admit(tenant_id, quotas, held, nothing_used)
    await limiter.admit(tenant_id, quotas, held, nothing_used)  # the retry: its slot and budget are its own
    await limiter.settle(tenant_id, held, spent(30))
    await limiter.settle(tenant_id, held, spent(30))  # the retry: charged once
    await limiter.admit(tenant_id, quotas, demand(tokens=70), nothing_used)  # 30 used + 70 = 100
    with pytest.raises(QuotaExceeded):
        await limiter.admit(tenant_id, Quotas(monthly_token_budget=100), demand(tokens=1), nothing_used)
    await limiter.close()


async def test_a_running_request_keeps_its_redis_slot_while_its_lease_is_renewed() -> None:
    limiter, tenant_id, quotas = RedisLimiter(REDIS_URL, lease_seconds=0.3), tenant(), Quotas(max_concurrent_requests=1)
    long_stream = demand()
    await limiter.admit(tenant_id, quotas, long_stream, nothing_used)
    for _ in range(6):  # 0.6 s: twice the lease
        await asyncio.sleep(0.1)
        await limiter.renew(tenant_id, [long_stream])
    with pytest.raises(RateLimited):
        await limiter.admit(tenant_id, quotas, demand(), nothing_used)
    await asyncio.sleep(0.5)  # no renewal: the lease of a dead gateway's request runs out
    await limiter.admit(tenant_id, quotas, demand(), nothing_used)
    await limiter.close()


async def test_a_rebuilt_redis_budget_keeps_open_jobs_for_their_own_lease() -> None:
    """The budget key is gone mid-month (evicted, Redis restarted): rebuilt from the ledger, the running jobs'
    reservations keep the training lease, not the lease of the inference request that rebuilt it."""
    limiter = RedisLimiter(REDIS_URL, lease_seconds=0.2, open_reservation_lease_seconds=3600)
    tenant_id, quotas = tenant(), Quotas(monthly_token_budget=1_000)

    async def snapshot(month: str) -> BudgetSnapshot:
        return BudgetSnapshot(0, 0, (OpenReservation("ftjob-running", 900, 0),))

    await limiter.admit(tenant_id, quotas, demand(tokens=50), snapshot)
    await asyncio.sleep(0.4)  # the inference request's lease has run out; the job's has not
    with pytest.raises(QuotaExceeded):
        await limiter.admit(tenant_id, quotas, demand(tokens=101), snapshot)  # 900 + 101 > 1000
    await limiter.close()


async def test_a_redis_window_written_before_running_totals_is_counted_whole() -> None:
    """Windows keep their sum beside their entries; a window a gateway of an older version wrote (entries, no
    sum) gets its sum once, so an upgrade in the middle of a minute neither forgets nor doubles a request."""

    from redis.asyncio import Redis

    limiter, tenant_id = RedisLimiter(REDIS_URL), tenant()
    redis = Redis.from_url(REDIS_URL)
    now = float((await redis.time())[0])
    for index in range(3):  # three requests of 20 tokens, admitted a moment ago by the old scripts
        await redis.zadd(f"llmaas:{{{tenant_id}}}:tok", {f"old-{index}": now - 1})
        await redis.hset(f"llmaas:{{{tenant_id}}}:tokv", f"old-{index}", 20)
    quotas = Quotas(tokens_per_minute=100)
    grant = await limiter.admit(tenant_id, quotas, demand(tokens=30), nothing_used)
    assert grant.headers["x-ratelimit-remaining-tokens"] == "10"  # 100 - 60 - 30
    with pytest.raises(RateLimited):
        await limiter.admit(tenant_id, quotas, demand(tokens=11), nothing_used)
    await redis.aclose()
    await limiter.close()
