"""The Redis limiter: the same rules as the in-process one, shared by every gateway process on one Redis.

Each admission and settlement is one Lua script, so concurrent requests on any number of gateways are
checked and recorded atomically. Time comes from Redis (``TIME``), not from the gateways' clocks.
Reservations and concurrency slots carry a lease: a gateway killed mid-request frees them after
``lease_seconds``.

Keys per tenant (hash-tagged so one tenant's keys share a cluster slot):
    llmaas:{t}:req       zset  request id -> admitted at            (RPM window)
    llmaas:{t}:tok       zset  request id -> admitted at            (TPM window)
    llmaas:{t}:tokv      hash  request id -> tokens (reserved, then actual)
    llmaas:{t}:inflight  zset  request id -> lease expiry
    llmaas:{t}:resv      hash  request id -> "tokens cost expiry"   (budget reservations)
    llmaas:{t}:budget:M  hash  used_t, used_c, resv_t, resv_c       (month M)
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from gateway.limits.base import (
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

_PRUNE = """
local function int(x) return string.format('%d', x) end

local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function prune(req, tok, tokv, inflight, resv, now, window)
  redis.call('ZREMRANGEBYSCORE', req, '-inf', now - window)
  local old = redis.call('ZRANGEBYSCORE', tok, '-inf', now - window)
  for _, id in ipairs(old) do
    redis.call('ZREM', tok, id)
    redis.call('HDEL', tokv, id)
  end
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
end

local function window_used(tokv)
  local used = 0
  for _, v in ipairs(redis.call('HVALS', tokv)) do used = used + tonumber(v) end
  return used
end

local function oldest_age_left(zset, now, window)
  local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  if #first == 0 then return 0 end
  return tonumber(first[2]) + window - now
end
"""

_ADMIT = (
    _PRUNE
    + """
-- KEYS: req, tok, tokv, inflight, resv, budget
-- ARGV: id, tokens, cost, rpm, tpm, concurrent, budget_tokens, budget_cost, lease, window (-1: unlimited)
local id = ARGV[1]
local tokens, cost = tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm, conc = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local btok, bcost = tonumber(ARGV[7]), tonumber(ARGV[8])
local lease, window = tonumber(ARGV[9]), tonumber(ARGV[10])
local now = now_seconds()
prune(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], now, window)

local has_budget = btok >= 0 or bcost >= 0
if has_budget and redis.call('EXISTS', KEYS[6]) == 0 then return {'init'} end

local req_used = redis.call('ZCARD', KEYS[1])
local tok_used = window_used(KEYS[3])
local req_reset = tostring(oldest_age_left(KEYS[1], now, window))
local tok_reset = tostring(oldest_age_left(KEYS[2], now, window))
local state = {req_used, req_reset, tok_used, tok_reset}

if conc >= 0 and redis.call('ZCARD', KEYS[4]) >= conc then return {'concurrency', state} end
if rpm >= 0 and req_used + 1 > rpm then return {'rpm', state} end
if tpm >= 0 and tok_used + tokens > tpm then
  -- walk the window oldest first until enough tokens have left it
  local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local left = tok_used
  local wait = window
  for i = 1, #entries, 2 do
    left = left - tonumber(redis.call('HGET', KEYS[3], entries[i]) or '0')
    if left + tokens <= tpm then
      wait = tonumber(entries[i + 1]) + window - now
      break
    end
  end
  return {'tpm', state, tostring(wait)}
end

if has_budget then
  -- expired reservations of gateways that died mid-request
  local resv = redis.call('HGETALL', KEYS[5])
  for i = 1, #resv, 2 do
    local rt, rc, expiry, month_key = string.match(resv[i + 1], '(%S+) (%S+) (%S+) (%S+)')
    if tonumber(expiry) < now then
      redis.call('HINCRBY', month_key, 'resv_t', int(0 - tonumber(rt)))
      redis.call('HINCRBY', month_key, 'resv_c', int(0 - tonumber(rc)))
      redis.call('HDEL', KEYS[5], resv[i])
    end
  end
  local b = redis.call('HMGET', KEYS[6], 'used_t', 'used_c', 'resv_t', 'resv_c')
  local committed_t = tonumber(b[1] or 0) + tonumber(b[3] or 0)
  local committed_c = tonumber(b[2] or 0) + tonumber(b[4] or 0)
  if btok >= 0 and committed_t + tokens > btok then return {'budget_tokens', state, int(committed_t)} end
  if bcost >= 0 and committed_c + cost > bcost then return {'budget_cost', state, int(committed_c)} end
  redis.call('HINCRBY', KEYS[6], 'resv_t', tokens)
  redis.call('HINCRBY', KEYS[6], 'resv_c', cost)
  redis.call('HSET', KEYS[5], id, ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. tostring(now + lease) .. ' ' .. KEYS[6])
end

redis.call('ZADD', KEYS[1], now, id)
redis.call('ZADD', KEYS[2], now, id)
redis.call('HSET', KEYS[3], id, tokens)
redis.call('ZADD', KEYS[4], now + lease, id)
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3]}) do redis.call('EXPIRE', key, math.ceil(window) + 5) end
redis.call('EXPIRE', KEYS[4], math.ceil(lease) + 5)
local after = {req_used + 1, tostring(oldest_age_left(KEYS[1], now, window)),
               tok_used + tokens, tostring(oldest_age_left(KEYS[2], now, window))}
return {'ok', after}
"""
)

_INIT_BUDGET = """
-- KEYS: budget; ARGV: used tokens, used cost, ttl seconds
if redis.call('HSETNX', KEYS[1], 'used_t', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'used_c', ARGV[2], 'resv_t', 0, 'resv_c', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"""

_SETTLE = """
local function int(x) return string.format('%d', x) end
-- KEYS: tok, tokv, inflight, resv, budget; ARGV: id, tokens, cost
local id = ARGV[1]
redis.call('ZREM', KEYS[3], id)
if redis.call('ZSCORE', KEYS[1], id) then redis.call('HSET', KEYS[2], id, ARGV[2]) end
local r = redis.call('HGET', KEYS[4], id)
if r then
  local rt, rc = string.match(r, '(%S+) (%S+)')
  redis.call('HINCRBY', KEYS[5], 'resv_t', int(0 - tonumber(rt)))
  redis.call('HINCRBY', KEYS[5], 'resv_c', int(0 - tonumber(rc)))
  redis.call('HDEL', KEYS[4], id)
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('HINCRBY', KEYS[5], 'used_t', ARGV[2])
  redis.call('HINCRBY', KEYS[5], 'used_c', ARGV[3])
end
return 1
"""

_PEEK = (
    _PRUNE
    + """
-- KEYS: req, tok, tokv, inflight, resv; ARGV: window
local window = tonumber(ARGV[1])
local now = now_seconds()
prune(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], now, window)
return {redis.call('ZCARD', KEYS[1]), tostring(oldest_age_left(KEYS[1], now, window)),
        window_used(KEYS[3]), tostring(oldest_age_left(KEYS[2], now, window))}
"""
)

_UNLIMITED = -1
_BUDGET_TTL_SECONDS = 40 * 24 * 3600


def _limit(value: int | None) -> int:
    return _UNLIMITED if value is None else value


class RedisLimiter:
    def __init__(self, url: str, *, lease_seconds: float = 900.0, window_seconds: float = 60.0) -> None:
        self._redis: Redis = Redis.from_url(url)
        self._lease = lease_seconds
        self._window = window_seconds
        self._admit = self._redis.register_script(_ADMIT)
        self._init_budget = self._redis.register_script(_INIT_BUDGET)
        self._settle = self._redis.register_script(_SETTLE)
        self._peek = self._redis.register_script(_PEEK)

    @staticmethod
    def _keys(tenant_id: str) -> list[str]:
        base = f"llmaas:{{{tenant_id}}}"
        return [f"{base}:req", f"{base}:tok", f"{base}:tokv", f"{base}:inflight", f"{base}:resv"]

    @staticmethod
    def _budget_key(tenant_id: str, month: str) -> str:
        return f"llmaas:{{{tenant_id}}}:budget:{month}"

    def _headers(self, quotas: Quotas, state: list[Any]) -> dict[str, str]:
        req_used, req_reset, tok_used, tok_reset = int(state[0]), float(state[1]), int(state[2]), float(state[3])
        requests = (
            None if quotas.requests_per_minute is None else WindowState(quotas.requests_per_minute, req_used, req_reset)
        )
        tokens = (
            None if quotas.tokens_per_minute is None else WindowState(quotas.tokens_per_minute, tok_used, tok_reset)
        )
        return rate_headers(requests, tokens)

    async def admit(self, tenant_id: str, quotas: Quotas, demand: Demand, month_to_date: MonthToDate) -> Grant:
        budget_key = self._budget_key(tenant_id, demand.month)
        args = [
            demand.request_id,
            demand.tokens,
            demand.cost_nanos,
            _limit(quotas.requests_per_minute),
            _limit(quotas.tokens_per_minute),
            _limit(quotas.max_concurrent_requests),
            _limit(quotas.monthly_token_budget),
            _limit(quotas.monthly_cost_budget_nanos),
            self._lease,
            self._window,
        ]
        keys = [*self._keys(tenant_id), budget_key]
        result = await self._admit(keys=keys, args=args)
        if result[0] == b"init":
            used_tokens, used_cost = await month_to_date()
            await self._init_budget(keys=[budget_key], args=[used_tokens, used_cost, _BUDGET_TTL_SECONDS])
            result = await self._admit(keys=keys, args=args)
        status = result[0].decode()
        headers = self._headers(quotas, result[1])
        if status == "ok":
            return Grant(headers)
        req_used, req_reset, tok_used = int(result[1][0]), float(result[1][1]), int(result[1][2])
        if status == "concurrency":
            raise too_many_concurrent(quotas.max_concurrent_requests or 0, headers)
        if status == "rpm":
            raise too_many_requests(quotas.requests_per_minute or 0, req_used, req_reset, headers)
        if status == "tpm":
            raise too_many_tokens(quotas.tokens_per_minute or 0, tok_used, demand.tokens, float(result[2]), headers)
        committed = int(float(result[2]))
        if status == "budget_tokens":
            raise budget_exceeded("token", quotas.monthly_token_budget or 0, committed, demand.tokens, headers)
        raise budget_exceeded("cost", quotas.monthly_cost_budget_nanos or 0, committed, demand.cost_nanos, headers)

    async def settle(self, tenant_id: str, demand: Demand, tokens: int, cost_nanos: int) -> None:
        _req, tok, tokv, inflight, resv = self._keys(tenant_id)
        keys = [tok, tokv, inflight, resv, self._budget_key(tenant_id, demand.month)]
        await self._settle(keys=keys, args=[demand.request_id, tokens, cost_nanos])

    async def headers(self, tenant_id: str, quotas: Quotas) -> dict[str, str]:
        state = await self._peek(keys=self._keys(tenant_id), args=[self._window])
        return self._headers(quotas, state)

    async def close(self) -> None:
        await self._redis.aclose()
