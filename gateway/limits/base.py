"""The limiter interface, and what both implementations share: rejections and rate-limit headers."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import QuotaExceeded, RateLimited
from gateway.tenancy.models import Quotas

WINDOW_SECONDS = 60.0
MonthToDate = Callable[[], Awaitable[tuple[int, int]]]
"""Loads (tokens, cost in nano-USD) the tenant used this month from the ledger."""


@dataclass(frozen=True)
class Demand:
    """What a request asks to reserve: prompt + max completion tokens, and the cost of that at most."""

    request_id: str
    tokens: int
    cost_nanos: int
    month: str


@dataclass(frozen=True)
class Grant:
    headers: dict[str, str]


@dataclass(frozen=True)
class WindowState:
    """A sliding window after admission: used units and seconds until the oldest entry leaves."""

    limit: int
    used: int
    reset_seconds: float


class Limiter(Protocol):
    async def admit(self, tenant_id: str, quotas: Quotas, demand: Demand, month_to_date: MonthToDate) -> Grant:
        """Reserve the demand or raise ``RateLimited`` / ``QuotaExceeded``. Atomic per tenant."""
        ...

    async def settle(self, tenant_id: str, demand: Demand, tokens: int, cost_nanos: int) -> None:
        """Replace the reservation by what the request really used; frees its concurrency slot."""
        ...

    async def headers(self, tenant_id: str, quotas: Quotas) -> dict[str, str]:
        """Current rate-limit headers without admitting anything."""
        ...

    async def close(self) -> None: ...


def format_duration(seconds: float) -> str:
    """OpenAI's style: '850ms', '12s', '1m3s'."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def rate_headers(requests: WindowState | None, tokens: WindowState | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, state in (("requests", requests), ("tokens", tokens)):
        if state is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(state.limit - state.used, 0))
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(state.reset_seconds)
    return headers


def retry_headers(seconds: float, base: dict[str, str]) -> dict[str, str]:
    seconds = max(seconds, 0.001)
    return {**base, "retry-after": str(math.ceil(seconds)), "retry-after-ms": str(math.ceil(seconds * 1000))}


def too_many_concurrent(limit: int, base: dict[str, str]) -> RateLimited:
    return RateLimited(
        f"Rate limit reached: {limit} concurrent requests are allowed and all are in use. Retry when one ends.",
        headers=retry_headers(1.0, base),
    )


def too_many_requests(limit: int, used: int, wait: float, base: dict[str, str]) -> RateLimited:
    return RateLimited(
        f"Rate limit reached for requests per minute (RPM): limit {limit}, used {used}, requested 1. "
        f"Please try again in {format_duration(wait)}.",
        headers=retry_headers(wait, base),
    )


def too_many_tokens(limit: int, used: int, requested: int, wait: float, base: dict[str, str]) -> RateLimited:
    if requested > limit:
        return RateLimited(
            f"Request too large for tokens per minute (TPM): limit {limit}, requested {requested} "
            "(prompt + max_tokens). Lower max_tokens or shorten the prompt.",
            headers={**base, "x-should-retry": "false"},
        )
    return RateLimited(
        f"Rate limit reached for tokens per minute (TPM): limit {limit}, used {used}, requested {requested}. "
        f"Please try again in {format_duration(wait)}.",
        headers=retry_headers(wait, base),
    )


def budget_exceeded(what: str, limit: int, used: int, requested: int, base: dict[str, str]) -> QuotaExceeded:
    unit = "tokens" if what == "token" else "nano-USD"
    return QuotaExceeded(
        f"You exceeded your monthly {what} budget: limit {limit} {unit}, used or reserved {used}, "
        f"this request needs up to {requested}. Ask your operator to raise the budget.",
        headers=base,
    )
