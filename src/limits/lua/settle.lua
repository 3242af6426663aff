-- Settle one admitted request once: move every window by what the actual
-- usage costs minus what was reserved (as recorded at admission), and release
-- its concurrency lease. The gateway works out what the actual tokens cost in
-- each window exactly (integer microseconds); the script only subtracts, adds
-- and writes.
-- KEYS: window keys (n), reservation key, then the lease sets to release
-- ARGV: clock override ('' = Redis TIME), n, request id, then what the actual
--       tokens cost in each window in us (0 for a window that counts requests)
-- Reply: 1 when settled now, 0 when there was nothing to settle.
local n = tonumber(ARGV[2])
for j = n + 2, #KEYS do redis.call('ZREM', KEYS[j], ARGV[3]) end
local record = redis.call('GET', KEYS[n + 1])
if not record then return 0 end
redis.call('DEL', KEYS[n + 1])
-- What each window was charged at admission. A record without the 'i:' mark
-- was written by an earlier version (a rolling upgrade): its request keeps what
-- it reserved.
if string.sub(record, 1, 2) ~= 'i:' then return 1 end
local reserved = {}
for inc in string.gmatch(string.sub(record, 3), '[^,]+') do reserved[#reserved + 1] = tonumber(inc) end
local now = now_us(ARGV[1])
for i = 1, n do
  local delta = tonumber(ARGV[3 + i]) - (reserved[i] or 0)
  if delta ~= 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    local new_tat = tat
    if delta > 0 then
      if tat < now then new_tat = now + delta else new_tat = tat + delta end
    elseif tat > now then
      new_tat = tat + delta
      if new_tat < now then new_tat = now end
    end
    if new_tat ~= tat then
      if new_tat > now then store_tat(KEYS[i], new_tat, now) else redis.call('DEL', KEYS[i]) end
    end
  end
end
return 1
