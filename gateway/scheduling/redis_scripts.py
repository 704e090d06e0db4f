"""The Lua scripts of the shared scheduler (``gateway.scheduling.redis``): each call is one atomic step on one
model's pool, whichever gateway makes it. Time is Redis's (``TIME``), in milliseconds.

KEYS (one pool, hash-tagged by model): 1 run (zset id -> lease expiry), 2 runv (hash id -> "tenant slots"),
3 trun (hash tenant -> slots running; "~total"), 4 waitv (hash id -> "tenant slots rank start member weight"),
5 waitn (hash tenant -> requests waiting; "~total"), 6 deadline (zset id -> deadline), 7 vt (hash rank -> virtual
time), 8 fin (hash "rank tenant" -> finish tag), 9 wait:0, 10 wait:1 (zsets by class: member -> start tag),
11 wait:fcfs (zset member -> arrival), 12 arrivals (counter).

Every script first reaps leases that lapsed (a gateway that died with requests running) and waits past their
deadline (one that died with requests waiting), then admits what fits (``dispatch``) with the caller's ARGV
``capacity burst_slots fair lease_ms``."""

PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function split(value)
  local out = {}
  for part in string.gmatch(value, '%S+') do out[#out + 1] = part end
  return out
end

local function release(id)
  local v = redis.call('HGET', KEYS[2], id)
  if not v then return 0 end
  local f = split(v)
  local slots = tonumber(f[2])
  if redis.call('HINCRBY', KEYS[3], f[1], -slots) <= 0 then redis.call('HDEL', KEYS[3], f[1]) end
  redis.call('HINCRBY', KEYS[3], '~total', -slots)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  return 1
end

local function unqueue(id)
  local v = redis.call('HGET', KEYS[4], id)
  if not v then return nil end
  local f = split(v)
  redis.call('ZREM', KEYS[9 + tonumber(f[3])], f[5])
  redis.call('ZREM', KEYS[11], f[5])
  redis.call('ZREM', KEYS[6], id)
  redis.call('HDEL', KEYS[4], id)
  if redis.call('HINCRBY', KEYS[5], f[1], -1) <= 0 then redis.call('HDEL', KEYS[5], f[1]) end
  redis.call('HINCRBY', KEYS[5], '~total', -1)
  return f
end

local function reap(now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do release(id) end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now)) do unqueue(id) end
end

local function held(tenant)
  return tonumber(redis.call('HGET', KEYS[3], tenant) or '0')
end

local function entry(member)
  local id = string.match(member, ':(.*)$')
  return id, split(redis.call('HGET', KEYS[4], id))
end

local function admit(now, lease, id, f, need)
  unqueue(id)
  redis.call('ZADD', KEYS[1], now + lease, id)
  redis.call('HSET', KEYS[2], id, f[1] .. ' ' .. need)
  redis.call('HINCRBY', KEYS[3], f[1], need)
  redis.call('HINCRBY', KEYS[3], '~total', need)
  local v = tonumber(redis.call('HGET', KEYS[7], f[3]) or '0')
  if tonumber(f[4]) > v then redis.call('HSET', KEYS[7], f[3], f[4]) end
end

-- Who runs next (as gateway.scheduling.memory's _next): FCFS, the first in line when it fits; fair, in the highest
-- class waiting, the request of the tenant with the least running per unit of weight (ties: start tags), and when
-- it does not fit, only a tenant with nothing running may pass it, into a burst slot.
local function next_one(capacity, burst, fair)
  local total = held('~total')
  if fair == 0 then
    local head = redis.call('ZRANGE', KEYS[11], 0, 0)[1]
    if not head then return nil end
    local id, f = entry(head)
    local need = math.min(tonumber(f[2]), capacity)
    if total + need <= capacity then return id, f, need end
    return nil
  end
  local best, best_f, best_share = nil, nil, nil
  for _, queue in ipairs({KEYS[9], KEYS[10]}) do
    for _, member in ipairs(redis.call('ZRANGE', queue, 0, -1)) do
      local id, f = entry(member)
      local share = held(f[1]) / tonumber(f[6])
      if best_share == nil or share < best_share then best, best_f, best_share = id, f, share end
    end
    if best then break end
  end
  if not best then return nil end
  local need = math.min(tonumber(best_f[2]), capacity)
  if total + need <= capacity or (burst > 0 and best_share == 0 and total + need <= capacity + burst) then
    return best, best_f, need
  end
  if burst == 0 then return nil end
  for _, queue in ipairs({KEYS[9], KEYS[10]}) do
    for _, member in ipairs(redis.call('ZRANGE', queue, 0, -1)) do
      local id, f = entry(member)
      need = math.min(tonumber(f[2]), capacity)
      if held(f[1]) == 0 and total + need <= capacity + burst then return id, f, need end
    end
  end
  return nil
end

local function dispatch(now, capacity, burst, fair, lease)
  while true do
    local id, f, need = next_one(capacity, burst, fair)
    if not id then return end
    admit(now, lease, id, f, need)
  end
end

local now = now_ms()
reap(now)
local capacity, burst, fair, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
"""

ENQUEUE = (
    PRELUDE
    + """
-- ARGV 5.. id tenant rank weight slots wait_ms max_per_tenant max_waiting
local id, tenant, rank = ARGV[5], ARGV[6], tonumber(ARGV[7])
local weight, slots, wait_ms = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
if tonumber(redis.call('HGET', KEYS[5], tenant) or '0') >= tonumber(ARGV[11]) then return 'tenant_full' end
if tonumber(redis.call('HGET', KEYS[5], '~total') or '0') >= tonumber(ARGV[12]) then return 'server_full' end
local arrival = redis.call('INCR', KEYS[12])
local member = string.format('%016d', arrival) .. ':' .. id
local fin_key = rank .. ' ' .. tenant
local start = math.max(tonumber(redis.call('HGET', KEYS[7], rank) or '0'),
                       tonumber(redis.call('HGET', KEYS[8], fin_key) or '0'))
redis.call('HSET', KEYS[8], fin_key, start + slots / weight)
redis.call('HSET', KEYS[4], id, tenant .. ' ' .. slots .. ' ' .. rank .. ' ' .. start .. ' ' .. member .. ' ' .. weight)
redis.call('ZADD', KEYS[9 + rank], start, member)
redis.call('ZADD', KEYS[11], arrival, member)
redis.call('ZADD', KEYS[6], now + wait_ms, id)
redis.call('HINCRBY', KEYS[5], tenant, 1)
redis.call('HINCRBY', KEYS[5], '~total', 1)
dispatch(now, capacity, burst, fair, lease)
if redis.call('HEXISTS', KEYS[2], id) == 1 then return 'running' end
return 'waiting'
"""
)

POLL = (
    PRELUDE
    + """
-- ARGV 5: how many waiting ids follow; then those ids, then the ids this gateway runs (their leases renewed)
dispatch(now, capacity, burst, fair, lease)
local waiting = tonumber(ARGV[5])
local states = {}
for i = 6, 5 + waiting do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[2], id) == 1 then states[#states + 1] = 1
  elseif redis.call('HEXISTS', KEYS[4], id) == 1 then states[#states + 1] = 0
  else states[#states + 1] = -1 end
end
for i = 6 + waiting, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then redis.call('ZADD', KEYS[1], now + lease, ARGV[i]) end
end
return states
"""
)

LEAVE = (
    PRELUDE
    + """
-- ARGV 5: the id of a request that stops waiting or running (whichever it is now); then admit what fits
unqueue(ARGV[5])
release(ARGV[5])
dispatch(now, capacity, burst, fair, lease)
return 1
"""
)
