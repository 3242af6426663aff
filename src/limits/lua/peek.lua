-- Read windows and slots without spending.
-- KEYS: window keys (n), slot key
-- ARGV: clock override ('' = Redis TIME), n
-- Reply: {now us, slots in use, TAT of each window}
local now = now_us(ARGV[1])
local n = tonumber(ARGV[2])
local now_ms = math.floor(now / 1000)
local out = {now, redis.call('ZCOUNT', KEYS[n + 1], '(' .. now_ms, '+inf')}
for i = 1, n do
  out[#out + 1] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
return out
