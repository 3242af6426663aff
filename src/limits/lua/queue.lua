-- One model's shared queue of requests waiting for a concurrency slot, served
-- in one fair order by every gateway replica.
--
-- Each time slots may be free (a request joins, a replica polls, a request
-- leaves), the grant pass gives every free slot of the model to the request
-- next in the fair order: it takes the slot (and the caller's own slots) on
-- the request's behalf for a short grace, and tells the request's replica,
-- which claims it with the request's reservation (batch.lua, kind 'c'). While
-- anyone waits, a request that did not wait is refused a slot (batch.lua's
-- gate), so nobody takes a slot ahead of the queue.
--
-- The order, the same as a single replica's (queue.ts): the highest priority
-- first, a request rising one class for every `aging` ms it has waited; within
-- a class, the tenant served longest ago, then its user served longest ago,
-- then the oldest request of that user. A tenant or user that joins anew counts
-- as served now. A user (or tenant) whose own concurrency is full is passed
-- over until one of their requests ends.
--
-- Replicas keep their entries alive by polling; a replica that stops polling
-- for `owner ttl` ms is dead and its entries are dropped (a slot granted to it
-- lapses with the grace). Every key expires soon after the last replica using
-- the queue stops.
--
-- Keys (base = KEYS[1] without its ':m'):
--   base:m   hash, entry -> its description (JSON: r rank, j joined ms, t
--            tenant, u user, o owner, k own lease sets, l their limits)
--   base:o   zset, owner -> when it lapses (ms)
--   base:oe:<owner>  set of the owner's waiting entries
--   base:u   zset, user (tenant NUL user) -> when last served (a stamp)
--   base:e:<user>    zset, the user's entries -> join order
--   base:t   zset, tenant -> when last served; base:tc hash, tenant -> entries
--   base:n   hash: seq (joins), served (grants)
--   base:g:<owner>   list of the owner's entries granted a slot, not yet told
-- KEYS: base:m, the model's lease set, then (join, leave) the request's own
--   lease sets.
-- ARGV: clock override ('' = Redis TIME), op ('join', 'poll', 'leave'), owner,
--   the model's slot limit, aging ms, owner ttl ms, grant grace ms, the longest
--   a request may wait (ms: the per-user and per-owner keys live that long
--   past their last join and each call of their owner); join: entry
--   id, rank (0 high, 1 normal, 2 low), tenant, user, max queued, then each own
--   lease set's limit; leave: entry id.
-- Reply: {joined (join: 1, or 0 when the queue is full; else 1), requests
--   waiting, the owner's requests waiting, then the owner's entries granted a
--   slot since it last asked}.
local ARGV, KEYS, call, tonumber = ARGV, KEYS, redis.call, tonumber
local now_ms = math.floor(now_us(ARGV[1]) / 1000)
local M = KEYS[1]
local SLOTS = KEYS[2]
local base = string.sub(M, 1, -3)
local O, U, T, TC, N = base .. ':o', base .. ':u', base .. ':t', base .. ':tc', base .. ':n'
local op, owner = ARGV[2], ARGV[3]
local limit, aging, owner_ttl, grace =
  tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local keep = owner_ttl * 2
-- An index key outlives every entry it holds: a request waits at most this long.
local index_ttl = tonumber(ARGV[8]) + keep
local function keep_index(key)
  if call('PTTL', key) < index_ttl then call('PEXPIRE', key, index_ttl) end
end

local function user_key(d) return d.t .. '\0' .. d.u end

-- Removes a waiting entry; returns its description (nil if it was not waiting).
local function drop(e)
  local raw = call('HGET', M, e)
  if not raw then return nil end
  local d = cjson.decode(raw)
  call('HDEL', M, e)
  local uk = user_key(d)
  local entries = base .. ':e:' .. uk
  call('ZREM', entries, e)
  if call('ZCARD', entries) == 0 then call('ZREM', U, uk) end
  if call('HINCRBY', TC, d.t, -1) <= 0 then
    call('HDEL', TC, d.t)
    call('ZREM', T, d.t)
  end
  call('SREM', base .. ':oe:' .. d.o, e)
  return d
end

-- Owners that stopped polling: their entries go.
local function prune()
  local dead = call('ZRANGEBYSCORE', O, '-inf', now_ms)
  for _, o in ipairs(dead) do
    local oe = base .. ':oe:' .. o
    for _, e in ipairs(call('SMEMBERS', oe)) do drop(e) end
    call('DEL', oe, base .. ':g:' .. o)
    call('ZREM', O, o)
  end
end

local function in_use(key)
  call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  return call('ZCARD', key)
end

local function hold(key, e)
  call('ZADD', key, now_ms + grace, e)
  if call('PTTL', key) < grace * 2 then call('PEXPIRE', key, grace * 2) end
end

-- Gives each free slot to the request next in the fair order.
local function grant()
  if call('HLEN', M) == 0 then return end
  local free = limit - in_use(SLOTS)
  local passed = {}
  while free > 0 do
    local users = call('ZRANGE', U, 0, -1, 'WITHSCORES')
    local best, best_d, best_uk, b_rank, b_tenant, b_user, b_seq
    for i = 1, #users, 2 do
      local uk = users[i]
      if not passed[uk] then
        local head = call('ZRANGE', base .. ':e:' .. uk, 0, 0, 'WITHSCORES')
        local raw = head[1] and call('HGET', M, head[1])
        if raw then
          local d = cjson.decode(raw)
          local rank = d.r - math.floor((now_ms - d.j) / aging)
          if rank < 0 then rank = 0 end
          local served_t = tonumber(call('ZSCORE', T, d.t) or '0')
          local served_u = tonumber(users[i + 1])
          local seq = tonumber(head[2])
          if best == nil or rank < b_rank or (rank == b_rank and (served_t < b_tenant or
              (served_t == b_tenant and (served_u < b_user or (served_u == b_user and seq < b_seq))))) then
            best, best_d, best_uk = head[1], d, uk
            b_rank, b_tenant, b_user, b_seq = rank, served_t, served_u, seq
          end
        end
      end
    end
    if best == nil then
      -- Entries whose user index is gone (it cannot be served): dropped.
      if #users == 0 then
        for _, e in ipairs(call('HKEYS', M)) do
          local raw = call('HGET', M, e)
          call('HDEL', M, e)
          if raw then
            local d = cjson.decode(raw)
            call('SREM', base .. ':oe:' .. d.o, e)
            call('HDEL', TC, d.t)
            call('ZREM', T, d.t)
          end
        end
      end
      return
    end
    local own_full = false
    for j, key in ipairs(best_d.k) do
      if in_use(key) >= best_d.l[j] then own_full = true end
    end
    if own_full then
      passed[best_uk] = true
    else
      drop(best)
      hold(SLOTS, best)
      for _, key in ipairs(best_d.k) do hold(key, best) end
      local granted = base .. ':g:' .. best_d.o
      call('RPUSH', granted, best)
      call('PEXPIRE', granted, keep)
      local served = call('HINCRBY', N, 'served', 1)
      if call('ZSCORE', U, best_uk) then call('ZADD', U, served, best_uk) end
      if call('ZSCORE', T, best_d.t) then call('ZADD', T, served, best_d.t) end
      free = free - 1
    end
  end
end

local joined = 1
-- A replica that asks is alive.
call('ZADD', O, now_ms + owner_ttl, owner)
prune()
keep_index(base .. ':oe:' .. owner)
if op == 'join' then
  local e, tenant, user = ARGV[9], ARGV[11], ARGV[12]
  grant()
  if call('HEXISTS', M, e) == 1 or call('ZSCORE', SLOTS, e) then
    -- Already waiting, or granted: joining again changes nothing.
    joined = 1
  elseif call('HLEN', M) >= tonumber(ARGV[13]) then
    joined = 0
  else
    local own, limits = {}, {}
    for j = 3, #KEYS do
      own[#own + 1] = KEYS[j]
      limits[#limits + 1] = tonumber(ARGV[11 + j])
    end
    local d = {r = tonumber(ARGV[10]), j = now_ms, t = tenant, u = user, o = owner, k = own, l = limits}
    call('HSET', M, e, cjson.encode(d))
    local seq = call('HINCRBY', N, 'seq', 1)
    local served = tonumber(call('HGET', N, 'served') or '0')
    local uk = user_key(d)
    local entries = base .. ':e:' .. uk
    call('ZADD', entries, seq, e)
    keep_index(entries)
    call('ZADD', U, 'NX', served, uk)
    call('ZADD', T, 'NX', served, tenant)
    call('HINCRBY', TC, tenant, 1)
    local oe = base .. ':oe:' .. owner
    call('SADD', oe, e)
    keep_index(oe)
    grant()
  end
elseif op == 'leave' then
  local e = ARGV[9]
  if not drop(e) then
    -- Granted, perhaps not yet claimed: give the slots back.
    call('LREM', base .. ':g:' .. owner, 0, e)
    call('ZREM', SLOTS, e)
    for j = 3, #KEYS do call('ZREM', KEYS[j], e) end
  end
  grant()
else
  grant()
end
for _, key in ipairs({M, O, U, T, TC, N}) do call('PEXPIRE', key, keep) end
local out = {joined, call('HLEN', M), call('SCARD', base .. ':oe:' .. owner)}
local granted = base .. ':g:' .. owner
local mine = call('LRANGE', granted, 0, -1)
if #mine > 0 then
  call('DEL', granted)
  for _, e in ipairs(mine) do out[#out + 1] = e end
end
return out
