"""The Redis limiter's Lua scripts (``gateway.accounting.limits.redis`` runs them): one per admission,
budget load, settlement, lease renewal and window peek, each atomic on one tenant's keys, on helpers they share
(``COMMON``: window pruning and state, reservation bookkeeping)."""

from __future__ import annotations

COMMON = """
local function int(x) return string.format('%d', x) end

local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- a window's weights carry their running sum under TOTAL, so a check costs the same at any traffic; a hash
-- written before the sum existed gets it once
local TOTAL = '~total'
local function ensure_total(weights)
  if redis.call('HEXISTS', weights, TOTAL) == 1 or redis.call('EXISTS', weights) == 0 then return end
  local used = 0
  for _, v in ipairs(redis.call('HVALS', weights)) do used = used + tonumber(v) end
  redis.call('HSET', weights, TOTAL, int(used))
end

local function set_weight(weights, id, amount)
  local old = tonumber(redis.call('HGET', weights, id) or '0')
  redis.call('HSET', weights, id, amount)
  redis.call('HINCRBY', weights, TOTAL, int(tonumber(amount) - old))
end

-- drop entries older than the window from a (zset of times, hash of weights) pair
local function prune_window(zset, weights, now, window)
  ensure_total(weights)
  local old = redis.call('ZRANGEBYSCORE', zset, '-inf', now - window)
  for _, id in ipairs(old) do
    redis.call('ZREM', zset, id)
    local amount = redis.call('HGET', weights, id)
    if amount then
      redis.call('HDEL', weights, id)
      redis.call('HINCRBY', weights, TOTAL, int(0 - tonumber(amount)))
    end
  end
end

local function window_used(weights)
  return tonumber(redis.call('HGET', weights, TOTAL) or '0')
end

local function oldest_age_left(zset, now, window)
  local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  if #first == 0 then return 0 end
  return tonumber(first[2]) + window - now
end

-- seconds until enough of the window's weight has left it for `needed` more to fit under `limit`
local function wait_until_fits(zset, weights, used, limit, needed, now, window)
  local entries = redis.call('ZRANGE', zset, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    used = used - tonumber(redis.call('HGET', weights, entries[i]) or '0')
    if used + needed <= limit then return tonumber(entries[i + 1]) + window - now end
  end
  return window
end

local function window_state(req, reqv, tok, tokv, now, window)
  return {window_used(reqv), tostring(oldest_age_left(req, now, window)),
          window_used(tokv), tostring(oldest_age_left(tok, now, window))}
end

-- give back one budget reservation (to the month it was made in), if it is still held
local function release(resv, id)
  local r = redis.call('HGET', resv, id)
  if not r then return end
  local rt, rc, _, month_key = string.match(r, '(%S+) (%S+) (%S+) (%S+)')
  if redis.call('EXISTS', month_key) == 1 then
    for field, amount in pairs({resv_t = rt, resv_c = rc}) do
      if redis.call('HINCRBY', month_key, field, int(0 - tonumber(amount))) < 0 then
        redis.call('HSET', month_key, field, 0)
      end
    end
  end
  redis.call('HDEL', resv, id)
end
"""

ADMIT = (
    COMMON
    + """
-- KEYS: req, reqv, tok, tokv, inflight, resv, budget
-- ARGV: id, has_rate, requests, tokens, slot, has_budget, budget_tokens, budget_cost,
--       rpm, tpm, concurrent, budget_token_limit, budget_cost_limit, lease, window       (-1: unlimited)
local req, reqv, tok, tokv, inflight, resv, budget = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local id = ARGV[1]
local has_rate, requests, tokens, slot = ARGV[2] == '1', tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
local has_budget, btokens, bcost = ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8])
local rpm, tpm, conc = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local btok_limit, bcost_limit = tonumber(ARGV[12]), tonumber(ARGV[13])
local lease, window = tonumber(ARGV[14]), tonumber(ARGV[15])
local now = now_seconds()
prune_window(req, reqv, now, window)
prune_window(tok, tokv, now, window)
redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)

-- the same demand again (the client retried a script whose reply was lost): it holds what it holds already
local recorded = has_rate and redis.call('HEXISTS', reqv, id) or redis.call('HEXISTS', resv, id)
if recorded == 1 then return {'ok', window_state(req, reqv, tok, tokv, now, window)} end

local checks_budget = has_budget and (btok_limit >= 0 or bcost_limit >= 0)
if checks_budget and redis.call('EXISTS', budget) == 0 then return {'init'} end

local state = window_state(req, reqv, tok, tokv, now, window)
local req_used, tok_used = state[1], state[3]
if has_rate then
  if slot and conc >= 0 and redis.call('ZCARD', inflight) >= conc then return {'concurrency', state} end
  if rpm >= 0 and req_used + requests > rpm then
    return {'rpm', state, tostring(wait_until_fits(req, reqv, req_used, rpm, requests, now, window))}
  end
  if tpm >= 0 and tok_used + tokens > tpm then
    return {'tpm', state, tostring(wait_until_fits(tok, tokv, tok_used, tpm, tokens, now, window))}
  end
end

if checks_budget then
  -- expired reservations of gateways that died holding them
  local held = redis.call('HGETALL', resv)
  for i = 1, #held, 2 do
    local expiry = tonumber(string.match(held[i + 1], '%S+ %S+ (%S+)'))
    if expiry < now then release(resv, held[i]) end
  end
  local b = redis.call('HMGET', budget, 'used_t', 'used_c', 'resv_t', 'resv_c')
  local committed_t = tonumber(b[1] or 0) + tonumber(b[3] or 0)
  local committed_c = tonumber(b[2] or 0) + tonumber(b[4] or 0)
  if btok_limit >= 0 and committed_t + btokens > btok_limit then return {'budget_tokens', state, int(committed_t)} end
  if bcost_limit >= 0 and committed_c + bcost > bcost_limit then return {'budget_cost', state, int(committed_c)} end
  redis.call('HINCRBY', budget, 'resv_t', ARGV[7])
  redis.call('HINCRBY', budget, 'resv_c', ARGV[8])
  redis.call('HSET', resv, id, ARGV[7] .. ' ' .. ARGV[8] .. ' ' .. tostring(now + lease) .. ' ' .. budget)
  if redis.call('TTL', resv) < math.ceil(lease) + 5 then redis.call('EXPIRE', resv, math.ceil(lease) + 5) end
end

if not has_rate then return {'ok', state} end
redis.call('ZADD', req, now, id)
set_weight(reqv, id, requests)
redis.call('ZADD', tok, now, id)
set_weight(tokv, id, tokens)
if slot then redis.call('ZADD', inflight, now + lease, id) end
for _, key in ipairs({req, reqv, tok, tokv}) do redis.call('EXPIRE', key, math.ceil(window) + 5) end
redis.call('EXPIRE', inflight, math.ceil(lease) + 5)
return {'ok', window_state(req, reqv, tok, tokv, now, window)}
"""
)

INIT_BUDGET = (
    COMMON
    + """
-- KEYS: budget, resv; ARGV: used tokens, used cost, ttl, lease of open reservations,
--       then (id, tokens, cost) per open reservation (fine-tuning jobs not yet released)
local budget, resv = KEYS[1], KEYS[2]
if redis.call('HSETNX', budget, 'used_t', ARGV[1]) == 0 then return 0 end
redis.call('HSET', budget, 'used_c', ARGV[2])
redis.call('EXPIRE', budget, ARGV[3])
local now = now_seconds()
local lease = tonumber(ARGV[4])
for i = 5, #ARGV, 3 do
  if redis.call('HEXISTS', resv, ARGV[i]) == 0 then
    local entry = ARGV[i + 1] .. ' ' .. ARGV[i + 2] .. ' ' .. tostring(now + lease) .. ' ' .. budget
    redis.call('HSET', resv, ARGV[i], entry)
  end
end
-- what this month has reserved: every live reservation that names it (also ones that outlived a lost key)
local rt, rc = 0, 0
local held = redis.call('HGETALL', resv)
for i = 1, #held, 2 do
  local tokens, cost, expiry, month_key = string.match(held[i + 1], '(%S+) (%S+) (%S+) (%S+)')
  if month_key == budget and tonumber(expiry) >= now then
    rt, rc = rt + tonumber(tokens), rc + tonumber(cost)
  end
end
redis.call('HSET', budget, 'resv_t', string.format('%d', rt), 'resv_c', string.format('%d', rc))
if redis.call('TTL', resv) < lease + 5 then redis.call('EXPIRE', resv, math.ceil(lease) + 5) end
return 1
"""
)

SETTLE = (
    COMMON
    + """
-- KEYS: tokv, inflight, resv, charged budget (may not exist), settled marker; ARGV: id, tokens, cost
local tokv, inflight, resv, charged = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]
-- settled once: a retried script (its reply lost) must not charge twice
if not redis.call('SET', KEYS[5], '1', 'NX', 'EX', 3600) then return 0 end
redis.call('ZREM', inflight, id)
if redis.call('HEXISTS', tokv, id) == 1 then
  ensure_total(tokv)
  set_weight(tokv, id, ARGV[2])
end
release(resv, id)
if redis.call('EXISTS', charged) == 1 then
  redis.call('HINCRBY', charged, 'used_t', ARGV[2])
  redis.call('HINCRBY', charged, 'used_c', ARGV[3])
end
return 1
"""
)

RENEW = (
    COMMON
    + """
-- KEYS: inflight, resv; ARGV: lease, then the ids of demands still running
local inflight, resv = KEYS[1], KEYS[2]
local expiry = now_seconds() + tonumber(ARGV[1])
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', inflight, id) then redis.call('ZADD', inflight, expiry, id) end
  local r = redis.call('HGET', resv, id)
  if r then
    local tokens, cost, _, month_key = string.match(r, '(%S+) (%S+) (%S+) (%S+)')
    redis.call('HSET', resv, id, tokens .. ' ' .. cost .. ' ' .. tostring(expiry) .. ' ' .. month_key)
  end
end
for _, key in ipairs({inflight, resv}) do
  if redis.call('TTL', key) < tonumber(ARGV[1]) + 5 then redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) + 5) end
end
return 1
"""
)

PEEK = (
    COMMON
    + """
-- KEYS: req, reqv, tok, tokv; ARGV: window
local window = tonumber(ARGV[1])
local now = now_seconds()
prune_window(KEYS[1], KEYS[2], now, window)
prune_window(KEYS[3], KEYS[4], now, window)
return window_state(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now, window)
"""
)
