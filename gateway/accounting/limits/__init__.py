"""Admission control per tenant: requests/minute and tokens/minute (sliding 60 s windows), concurrent
requests, and monthly token and cost budgets. In process by default; shared through Redis (atomic Lua)
when several gateway processes serve the same tenants."""

from gateway.accounting.limits.base import (
    BudgetDemand,
    BudgetSnapshot,
    Demand,
    Grant,
    Limiter,
    MonthToDate,
    OpenReservation,
    RateDemand,
    Settlement,
)
from gateway.accounting.limits.memory import MemoryLimiter
from gateway.accounting.limits.redis import RedisLimiter

__all__ = [
    "BudgetDemand",
    "BudgetSnapshot",
    "Demand",
    "Grant",
    "Limiter",
    "MemoryLimiter",
    "MonthToDate",
    "OpenReservation",
    "RateDemand",
    "RedisLimiter",
    "Settlement",
]
