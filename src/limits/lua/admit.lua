-- Admit one request: a concurrency lease (if limited) and an all-or-nothing
-- GCRA reservation over every window, atomically, with Redis TIME as the clock.
-- KEYS: window keys (n), reservation key, slot key
-- ARGV: clock override ('' = Redis TIME), cost, n, slot limit (0 = none),
--       request id, lease ms, reservation ttl ms, then windowUs, limit, burst,
--       per-request (1: the window counts requests, each costs 1) for each window
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

local slot_key = KEYS[n + 2]
local now_ms = math.floor(now / 1000)
if never > 0 then
  kind = 2
  blocking = never
  worst = 0
elseif slot_limit > 0 and redis.call('ZCARD', slot_key) >= slot_limit then
  -- Full: drop lapsed leases (only now, to keep the common path short) and count again.
  redis.call('ZREMRANGEBYSCORE', slot_key, '-inf', now_ms)
  if redis.call('ZCARD', slot_key) >= slot_limit then
    kind = 3
    blocking = 0
    worst = 0
  end
end
if kind == 0 and blocking > 0 then kind = 1 end

local out = {kind, blocking, worst}
local view = tats
if kind == 0 then
  for i = 1, n do store_tat(KEYS[i], new_tats[i], now) end
  redis.call('SET', KEYS[n + 1], string.format('%.0f', cost), 'PX', reservation_ttl_ms)
  if slot_limit > 0 then
    redis.call('ZADD', slot_key, now_ms + lease_ms, request_id)
    redis.call('PEXPIRE', slot_key, lease_ms * 2)
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
