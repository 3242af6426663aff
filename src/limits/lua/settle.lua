-- Settle one admitted request once: move every window by what the actual
-- usage costs minus what was reserved, and release its concurrency lease.
-- KEYS: window keys (n), reservation key, then the lease sets to release
-- ARGV: clock override ('' = Redis TIME), actual tokens, n, request id, then
--       windowUs, limit, burst, per-request for each window (per-request windows
--       are left as they are)
-- Reply: 1 when settled now, 0 when there was nothing to settle.
local actual = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
for j = n + 2, #KEYS do redis.call('ZREM', KEYS[j], ARGV[4]) end
local reserved = redis.call('GET', KEYS[n + 1])
if not reserved then return 0 end
redis.call('DEL', KEYS[n + 1])
reserved = tonumber(reserved)
local now = now_us(ARGV[1])
for i = 1, n do
  local w = tonumber(ARGV[1 + 4 * i])
  local l = tonumber(ARGV[2 + 4 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local delta = 0
  if ARGV[4 + 4 * i] ~= '1' then delta = mul_div_ceil(actual, w, l) - mul_div_ceil(reserved, w, l) end
  local new_tat = tat
  if delta > 0 then
    if tat < now then new_tat = now + delta else new_tat = tat + delta end
  elseif delta < 0 and tat > now then
    new_tat = tat + delta
    if new_tat < now then new_tat = now end
  end
  if new_tat ~= tat then
    if new_tat > now then store_tat(KEYS[i], new_tat, now) else redis.call('DEL', KEYS[i]) end
  end
end
return 1
