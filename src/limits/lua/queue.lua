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
-- The order, as a single replica's (queue.ts): the highest priority first, a
-- request rising one class for every `aging` ms it has waited; within a class,
-- the tenant served longest ago, then its user served longest ago, then the
-- oldest request of that user. A tenant or user that joins anew counts as
-- served now (ties: the one that joined first). A user (or tenant) whose own
-- concurrency is full is passed over until one of their requests ends.
--
-- The cost of a grant does not grow with the queue: users are indexed by the
-- priority class of their oldest request, tenants and users in zsets by when
-- they were last served, so each class offers its next request in a few
-- lookups and the best of the (at most three) offers wins. The offer of a class
-- is the request of its tenant and user served longest ago; among requests of
-- one class that is, as a rule, also the one that has waited longest, whose
-- aging decides. Passing over users whose own limit is full is bounded per
-- call; the next call goes on.
--
-- Replicas keep their entries alive by polling; a replica that stops polling
-- for `owner ttl` ms is dead and its entries are dropped (a slot granted to it
-- lapses with the grace). Every key expires once no request can still be
-- waiting in it (the longest wait plus twice the owner ttl after it was last
-- written).
--
-- Keys (base = KEYS[1] without its ':m'):
--   base:m   hash, entry -> its description (JSON: r rank, j joined ms, t
--            tenant, u user, o owner, k own lease sets, l their limits)
--   base:o   zset, owner -> when it lapses (ms)
--   base:oe:<owner>  set of the owner's waiting entries
--   base:g:<owner>   list of the owner's entries granted a slot, not yet told
--   base:u   zset, user (tenant NUL user) -> stamp (when last served)
--   base:t   zset, tenant -> stamp; base:tc hash, tenant -> entries waiting
--   base:e:<user>    zset, the user's entries -> join order
--   base:c<r>:t      zset, tenants with a user whose oldest request has
--                    priority r -> the tenant's stamp
--   base:c<r>:u:<tenant>  zset, those users -> the user's stamp
--   base:n   hash: seq (joins), served (grants)
-- A stamp is served * 2^21 + the join order (mod 2^21): later service first,
-- then who joined first.
-- KEYS: base:m, the model's lease set, then (join, leave) the request's own
--   lease sets.
-- ARGV: clock override ('' = Redis TIME), op ('join', 'poll', 'leave'), owner,
--   the model's slot limit, aging ms, owner ttl ms, grant grace ms, the longest
--   a request may wait (ms); join: entry id, rank (0 high, 1 normal, 2 low),
--   tenant, user, max queued, then each own lease set's limit; leave: entry id.
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
-- Every key outlives every request it holds: a request waits at most this long.
local ttl = tonumber(ARGV[8]) + keep
local STAMP = 2097152
-- Own-full users passed over in one call, at most.
local MAX_PASSES = 32

local touched = {}
local function touch(key)
  if not touched[key] then
    touched[key] = true
    call('PEXPIRE', key, ttl)
  end
end

local function user_key(d) return d.t .. '\0' .. d.u end
local function entries_of(uk) return base .. ':e:' .. uk end
local function class_tenants(r) return base .. ':c' .. r .. ':t' end
local function class_users(r, t) return base .. ':c' .. r .. ':u:' .. t end

local function describe(e)
  local raw = e and call('HGET', M, e)
  if not raw then return nil end
  return cjson.decode(raw)
end

-- Indexes user `uk` of tenant `t` in class `r`, with its and its tenant's stamps.
local function index(uk, t, r)
  local users = class_users(r, t)
  call('ZADD', users, call('ZSCORE', U, uk), uk)
  touch(users)
  local tenants = class_tenants(r)
  call('ZADD', tenants, call('ZSCORE', T, t), t)
  touch(tenants)
end

local function unindex(uk, t, r)
  local users = class_users(r, t)
  call('ZREM', users, uk)
  if call('ZCARD', users) == 0 then call('ZREM', class_tenants(r), t) end
end

-- Removes a waiting entry; returns its description (nil if it was not waiting).
local function drop(e)
  local d = describe(e)
  if d == nil then return nil end
  call('HDEL', M, e)
  local uk = user_key(d)
  local entries = entries_of(uk)
  local head = call('ZRANGE', entries, 0, 0)[1]
  call('ZREM', entries, e)
  if head == e then
    -- The user's oldest request went: the next one decides its class.
    unindex(uk, d.t, d.r)
    local next = describe(call('ZRANGE', entries, 0, 0)[1])
    if next then index(uk, d.t, next.r) end
  end
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

-- The first user of class r not passed over, with its tenant's and its
-- stamps. Read one at a time: it looks at no more users than were passed over.
local function offer(r, passed)
  local tenants = class_tenants(r)
  local i = 0
  while true do
    local tenant = call('ZRANGE', tenants, i, i, 'WITHSCORES')
    if #tenant == 0 then return nil end
    local t = tenant[1]
    local users = class_users(r, t)
    local j = 0
    while true do
      local user = call('ZRANGE', users, j, j, 'WITHSCORES')
      if #user == 0 then break end
      if not passed[user[1]] then
        return user[1], t, tonumber(tenant[2]), tonumber(user[2])
      end
      j = j + 1
    end
    i = i + 1
  end
end

-- Entries no index leads to (a Redis whose eviction policy dropped a key of
-- the queue; the recommended noeviction never does) are indexed again, or
-- dropped when their user's list lost them.
local function repair()
  for _, e in ipairs(call('HKEYS', M)) do
    local d = describe(e)
    local uk = user_key(d)
    if not call('ZSCORE', entries_of(uk), e) then
      call('HDEL', M, e)
      call('SREM', base .. ':oe:' .. d.o, e)
      if call('HINCRBY', TC, d.t, -1) <= 0 then
        call('HDEL', TC, d.t)
        call('ZREM', T, d.t)
      end
    else
      if not call('ZSCORE', U, uk) then call('ZADD', U, 0, uk) end
      if not call('ZSCORE', T, d.t) then call('ZADD', T, 0, d.t) end
      local head = describe(call('ZRANGE', entries_of(uk), 0, 0)[1])
      if head then index(uk, d.t, head.r) end
    end
  end
end

-- Gives each free slot to the request next in the fair order.
local function grant()
  if call('HLEN', M) == 0 then return end
  local free = limit - in_use(SLOTS)
  local passed = {}
  local passes = 0
  local repaired = false
  while free > 0 and passes <= MAX_PASSES do
    local best, best_d, best_uk, b_rank, b_tenant, b_user, b_seq
    for r = 0, 2 do
      local uk, t, served_t, served_u = offer(r, passed)
      if uk then
        local head = call('ZRANGE', entries_of(uk), 0, 0, 'WITHSCORES')
        local d = describe(head[1])
        if d then
          local rank = r - math.floor((now_ms - d.j) / aging)
          if rank < 0 then rank = 0 end
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
      if passes > 0 or repaired then return end
      -- Requests wait, yet no index leads to one.
      repair()
      repaired = true
    else
      local own_full = false
      for j, key in ipairs(best_d.k) do
        if in_use(key) >= best_d.l[j] then own_full = true end
      end
      if own_full then
        passed[best_uk] = true
        passes = passes + 1
      else
        drop(best)
        hold(SLOTS, best)
        for _, key in ipairs(best_d.k) do hold(key, best) end
        local granted = base .. ':g:' .. best_d.o
        call('RPUSH', granted, best)
        call('PEXPIRE', granted, keep)
        local served = call('HINCRBY', N, 'served', 1) * STAMP
        if call('ZSCORE', U, best_uk) then
          call('ZADD', U, served, best_uk)
          local next = describe(call('ZRANGE', entries_of(best_uk), 0, 0)[1])
          if next then call('ZADD', class_users(next.r, best_d.t), served, best_uk) end
        end
        if call('ZSCORE', T, best_d.t) then
          call('ZADD', T, served, best_d.t)
          for r = 0, 2 do
            local tenants = class_tenants(r)
            if call('ZSCORE', tenants, best_d.t) then call('ZADD', tenants, served, best_d.t) end
          end
        end
        free = free - 1
      end
    end
  end
end

local joined = 1
-- A replica that asks is alive.
call('ZADD', O, now_ms + owner_ttl, owner)
call('PEXPIRE', O, ttl)
prune()
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
    local stamp = tonumber(call('HGET', N, 'served') or '0') * STAMP + seq % STAMP
    local uk = user_key(d)
    local entries = entries_of(uk)
    call('ZADD', entries, seq, e)
    touch(entries)
    if call('HINCRBY', TC, tenant, 1) == 1 then call('ZADD', T, stamp, tenant) end
    if call('ZCARD', entries) == 1 then
      call('ZADD', U, stamp, uk)
      index(uk, tenant, d.r)
    end
    local oe = base .. ':oe:' .. owner
    call('SADD', oe, e)
    touch(oe)
    for _, key in ipairs({M, U, T, TC, N}) do touch(key) end
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
local out = {joined, call('HLEN', M), call('SCARD', base .. ':oe:' .. owner)}
local granted = base .. ':g:' .. owner
local mine = call('LRANGE', granted, 0, -1)
if #mine > 0 then
  call('DEL', granted)
  for _, e in ipairs(mine) do out[#out + 1] = e end
end
return out
