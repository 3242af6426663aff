-- Admit one request: a concurrency lease (if limited) and an all-or-nothing
-- GCRA reservation over every window, atomically, with Redis TIME as the clock.
-- KEYS: window keys (n), reservation key, then the lease sets to take a slot in
--       (the model's first, then a user's or tenant's own), possibly none
-- ARGV: clock override ('' = Redis TIME), cost, n, model slot limit (0 = none),
--       request id, lease ms, reservation ttl ms, then windowUs, limit, burst,
--       per-request (1: the window counts requests, each costs 1) for each window,
--       then the limit of each further lease set
-- Reply for kind 3 names the full lease set (1-based) in the blocking index.
-- Reply: {kind, blocking index (1-based, 0 = none), retry after us,
--         remaining, used, reset us for each window}
-- kind: 0 admitted, 1 limited, 2 never fits, 3 no concurrency slot
local now = now_us(ARGV[1])
local cost = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local slot_limit = tonumber(ARGV[4])
local request_id = ARGV[5]
local lease_ms = tonumber(ARGV[6])
local reservation_ttl_ms = tonumber(ARGV[7])

local tats, new_tats, specs = {}, {}, {}
local kind, blocking, worst, never = 0, 0, 0, 0
for i = 1, n do
  local w = tonumber(ARGV[4 + 4 * i])
  local l = tonumber(ARGV[5 + 4 * i])
  local b = tonumber(ARGV[6 + 4 * i])
  local c = cost
  if ARGV[7 + 4 * i] == '1' then c = 1 end
  specs[i] = {w, l, b}
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  tats[i] = tat
  local inc = mul_div_ceil(c, w, l)
  local tau = mul_div_ceil(b, w, l)
  if inc > tau and never == 0 then never = i end
  local base = tat
  if base < now then base = now end
  local new_tat = base + inc
  new_tats[i] = new_tat
  local wait = new_tat - (now + tau)
  if wait > worst then worst = wait; blocking = i end
end

local now_ms = math.floor(now / 1000)
-- Lease sets and their limits: the model's (ARGV[4], 0 = none), then further ones.
local slot_keys, slot_limits = {}, {}
for j = n + 2, #KEYS do
  local idx = #slot_keys + 1
  slot_keys[idx] = KEYS[j]
  if idx == 1 then slot_limits[idx] = slot_limit else slot_limits[idx] = tonumber(ARGV[6 + 4 * n + idx]) end
end
if never > 0 then
  kind = 2
  blocking = never
  worst = 0
else
  for j = 1, #slot_keys do
    local key, limit = slot_keys[j], slot_limits[j]
    if limit > 0 and redis.call('ZCARD', key) >= limit then
      -- Full: drop lapsed leases (only now, to keep the common path short) and count again.
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
      if redis.call('ZCARD', key) >= limit then
        kind = 3
        blocking = j
        worst = 0
        break
      end
    end
  end
end
if kind == 0 and blocking > 0 then kind = 1 end

local out = {kind, blocking, worst}
local view = tats
if kind == 0 then
  for i = 1, n do store_tat(KEYS[i], new_tats[i], now) end
  redis.call('SET', KEYS[n + 1], string.format('%.0f', cost), 'PX', reservation_ttl_ms)
  for j = 1, #slot_keys do
    if slot_limits[j] > 0 then
      redis.call('ZADD', slot_keys[j], now_ms + lease_ms, request_id)
      redis.call('PEXPIRE', slot_keys[j], lease_ms * 2)
    end
  end
  view = new_tats
end
for i = 1, n do
  local s = specs[i]
  local remaining, used, reset = window_status(view[i], now, s[1], s[2], s[3])
  out[#out + 1] = remaining
  out[#out + 1] = used
  out[#out + 1] = reset
end
return out
