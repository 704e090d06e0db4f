"""Admission control per tenant: requests/minute and tokens/minute (sliding 60 s windows), concurrent
requests, and monthly token and cost budgets. In process by default; shared through Redis (atomic Lua)
when several gateway processes serve the same tenants."""

from gateway.limits.base import Demand, Grant, Limiter
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter

__all__ = ["Demand", "Grant", "Limiter", "MemoryLimiter", "RedisLimiter"]
