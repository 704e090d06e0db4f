"""The limiter interface, what a request asks of it, and what both implementations share: rejections and
rate-limit headers.

A demand has two independent parts. Its *rate* part counts against the tenant's requests per minute, tokens per
minute and concurrent requests (inference; an upload takes one request of the RPM window and nothing else). Its
*budget* part reserves tokens and cost against the monthly budgets (inference and fine-tuning jobs; a job
reserves nothing else). Whatever a demand holds is keyed by its server-minted id, never by a client value."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.errors import QuotaExceeded, RateLimited
from gateway.tenancy.models import Quotas

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class RateDemand:
    requests: int = 1
    """Units of the RPM window: one per prompt of the request."""
    tokens: int = 0
    """Reserved in the TPM window (prompt + most completion tokens), replaced by the real count at settlement."""
    slot: bool = True
    """Holds one of the tenant's concurrent-request slots until settled."""


@dataclass(frozen=True)
class BudgetDemand:
    tokens: int
    cost_nanos: int
    month: str
    """The calendar month (``YYYY-MM``, UTC) whose budget holds the reservation."""


@dataclass(frozen=True)
class Demand:
    id: str
    """The server's id of the request or job; it keys every window entry, slot and reservation."""
    rate: RateDemand | None = None
    budget: BudgetDemand | None = None
    lease_seconds: float | None = None
    """Redis: how long the reservation outlives a gateway that died holding it (None: the limiter's lease)."""


@dataclass(frozen=True)
class Settlement:
    """What a demand really used; it replaces the reservation."""

    tokens: int
    cost_nanos: int
    month: str | None = None
    """The month the use is charged to (its ledger record's); None: the reservation's month."""


@dataclass(frozen=True)
class OpenReservation:
    id: str
    tokens: int
    cost_nanos: int


@dataclass(frozen=True)
class BudgetSnapshot:
    """A month's ledger totals and the reservations still open (fine-tuning jobs not yet released), read in
    one consistent snapshot when a limiter first needs that month's budget."""

    used_tokens: int
    used_cost_nanos: int
    open_reservations: tuple[OpenReservation, ...] = field(default=())


MonthToDate = Callable[[str], Awaitable[BudgetSnapshot]]
"""Reads a month's ``BudgetSnapshot`` of the tenant from the database."""


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

    async def settle(self, tenant_id: str, demand: Demand, used: Settlement) -> None:
        """Replace the reservation by what the demand really used; frees its concurrency slot. A demand this
        limiter never admitted (made before a restart) still frees what it can find and counts its use."""
        ...

    async def renew(self, tenant_id: str, demands: list[Demand]) -> None:
        """Extend the leases of demands still running (where leases exist)."""
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


_WINDOWS = {
    "rpm": ("requests per minute (RPM)", "(one per prompt). Send fewer prompts per request."),
    "tpm": ("tokens per minute (TPM)", "(prompt + max_tokens). Lower max_tokens or shorten the prompt."),
}


def window_exceeded(
    window: Literal["rpm", "tpm"], limit: int, used: int, requested: int, wait: float, base: dict[str, str]
) -> RateLimited:
    name, advice = _WINDOWS[window]
    if requested > limit:  # can never fit: retrying does not help
        return RateLimited(
            f"Request too large for {name}: limit {limit}, requested {requested} {advice}",
            headers={**base, "x-should-retry": "false"},
        )
    return RateLimited(
        f"Rate limit reached for {name}: limit {limit}, used {used}, requested {requested}. "
        f"Please try again in {format_duration(wait)}.",
        headers=retry_headers(wait, base),
    )


def budget_exceeded(
    what: str, limit: int, used: int, requested: int, base: dict[str, str], *, of_key: bool = False
) -> QuotaExceeded:
    """The refusal of a spent monthly budget: the tenant's, or (``of_key``) the key's own."""
    unit = "tokens" if what == "token" else "nano-USD"
    whose = "This API key exceeded its own" if of_key else "You exceeded your"
    return QuotaExceeded(
        f"{whose} monthly {what} budget: limit {limit} {unit}, used or reserved {used}, "
        f"this request needs up to {requested}. Ask your operator to raise the budget.",
        headers=base,
    )


def wait_until_fits(entries: list[tuple[float, int]], used: int, limit: int, needed: int, now: float) -> float:
    """Seconds until enough of a window's ``(admitted at, units)`` entries, oldest first, have left it for
    ``needed`` more units to fit."""
    for at, units in entries:
        used -= units
        if used + needed <= limit:
            return at + WINDOW_SECONDS - now
    return WINDOW_SECONDS
