"""Sign-in throttling: failed console sign-ins are counted per client address in a sliding 60 s window. Once the
count reaches its limit (``LLMAAS_CONSOLE_SIGN_IN_FAILURES_PER_ADDRESS`` per minute), sign-in from that address
answers 429 without checking the key, until the oldest failure leaves the window. Counted in this process, or in
Redis when ``LLMAAS_REDIS_URL`` is set, so that every gateway of a deployment counts together.

Nothing is counted per key: a key carries 288 random bits, so no number of addresses can guess one, and a count
per key prefix would only let whoever sees a prefix (a tenant's keys page shows its siblings') keep that key's
owner out of the console."""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from typing import Protocol

from redis.asyncio import Redis

from gateway.errors import RateLimited

WINDOW_SECONDS = 60.0
_MAX_NAMES = 100_000


class FailureWindow(Protocol):
    async def recent(self, name: str, limit: int) -> tuple[int, float]:
        """Failures of ``name`` in the window (counted up to ``limit``) and seconds until the oldest leaves it."""
        ...

    async def add(self, name: str, limit: int) -> None:
        """Count one failure of ``name`` (keeping at most the newest ``limit``)."""
        ...

    async def close(self) -> None: ...


class MemoryFailures:
    """Exact for one process; at most ``_MAX_NAMES`` names (the oldest are forgotten first)."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    async def recent(self, name: str, limit: int) -> tuple[int, float]:
        failures = self._failures.get(name)
        if not failures:
            return 0, 0.0
        now = time.monotonic()
        while failures and failures[0] <= now - WINDOW_SECONDS:
            failures.popleft()
        if not failures:
            del self._failures[name]
            return 0, 0.0
        return len(failures), failures[0] + WINDOW_SECONDS - now

    async def add(self, name: str, limit: int) -> None:
        failures = self._failures.get(name)
        if failures is None:
            if len(self._failures) >= _MAX_NAMES:
                self._failures.pop(next(iter(self._failures)))
            failures = self._failures[name] = deque(maxlen=limit)
        failures.append(time.monotonic())

    async def close(self) -> None:
        self._failures.clear()


class RedisFailures:
    """One sorted set per name (failure times), trimmed to the window and to ``limit`` entries, expiring with it."""

    def __init__(self, url: str) -> None:
        self._redis: Redis = Redis.from_url(url)

    @staticmethod
    def _key(name: str) -> str:
        return f"llmaas:signin:{name}"

    async def recent(self, name: str, limit: int) -> tuple[int, float]:
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self._key(name), "-inf", now - WINDOW_SECONDS)
            pipe.zcard(self._key(name))
            pipe.zrange(self._key(name), 0, 0, withscores=True)
            _, count, oldest = await pipe.execute()
        return int(count), (oldest[0][1] + WINDOW_SECONDS - now) if oldest else 0.0

    async def add(self, name: str, limit: int) -> None:
        key = self._key(name)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {secrets.token_hex(8): time.time()})
            pipe.zremrangebyrank(key, 0, -(limit + 1))
            pipe.expire(key, math.ceil(WINDOW_SECONDS) + 1)
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


class SignInThrottle:
    def __init__(self, failures: FailureWindow, per_address: int) -> None:
        self._failures = failures
        self._limit = per_address

    @staticmethod
    def _name(address: str) -> str:
        return f"address:{address[:64]}"

    async def check(self, address: str) -> None:
        """Raise ``RateLimited`` (429, with Retry-After) if sign-ins from this address failed too often."""
        count, wait = await self._failures.recent(self._name(address), self._limit)
        if count >= self._limit:
            seconds = max(math.ceil(wait), 1)
            raise RateLimited(
                f"Too many failed sign-ins from your address. Try again in {seconds} s.",
                code="sign_in_throttled",
                headers={"retry-after": str(seconds)},
            )

    async def failed(self, address: str) -> None:
        await self._failures.add(self._name(address), self._limit)

    async def close(self) -> None:
        await self._failures.close()


def sign_in_throttle(redis_url: str | None, per_address: int) -> SignInThrottle:
    failures: FailureWindow = RedisFailures(redis_url) if redis_url else MemoryFailures()
    return SignInThrottle(failures, per_address)
