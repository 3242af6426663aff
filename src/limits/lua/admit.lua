-- Admit one request: a concurrency lease (if limited) and an all-or-nothing
-- GCRA reservation over every window, atomically, with Redis TIME as the clock.
-- The gateway works out each window's increment and tolerance exactly (integer
-- microseconds); the script only reads, compares, adds and writes.
-- KEYS: window keys (n), reservation key, then the lease sets to take a slot in
--       (the model's first, then a user's or tenant's own), possibly none
-- ARGV: clock override ('' = Redis TIME), the reservation's record (what each
--       window was charged for the reserved tokens, 'i:' and comma-separated),
--       n, model slot limit (0 = none), request id, lease ms, reservation ttl ms,
--       then for each window its increment and tolerance (us), then the limit of
--       each further lease set
-- Reply: {kind, blocking index (1-based, 0 = none), retry after us, now us,
--         the TAT of each window (the new ones when admitted)}
-- kind: 0 admitted, 1 limited, 2 never fits, 3 no concurrency slot (the
-- blocking index then names the full lease set, 1-based)
local now = now_us(ARGV[1])
local record = ARGV[2]
local n = tonumber(ARGV[3])
local slot_limit = tonumber(ARGV[4])
local request_id = ARGV[5]
local lease_ms = tonumber(ARGV[6])
local reservation_ttl_ms = tonumber(ARGV[7])

local tats, new_tats = {}, {}
local kind, blocking, worst, never = 0, 0, 0, 0
for i = 1, n do
  local inc = tonumber(ARGV[6 + 2 * i])
  local tau = tonumber(ARGV[7 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  tats[i] = tat
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
  if idx == 1 then slot_limits[idx] = slot_limit else slot_limits[idx] = tonumber(ARGV[6 + 2 * n + idx]) end
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

local out = {kind, blocking, worst, now}
local view = tats
if kind == 0 then
  for i = 1, n do store_tat(KEYS[i], new_tats[i], now) end
  redis.call('SET', KEYS[n + 1], record, 'PX', reservation_ttl_ms)
  for j = 1, #slot_keys do
    if slot_limits[j] > 0 then
      redis.call('ZADD', slot_keys[j], now_ms + lease_ms, request_id)
      redis.call('PEXPIRE', slot_keys[j], lease_ms * 2)
    end
  end
  view = new_tats
end
for i = 1, n do out[#out + 1] = view[i] end
return out
