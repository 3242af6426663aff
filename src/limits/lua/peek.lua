-- Read windows and slots without spending.
-- KEYS: owner hashes (o), slot key
-- ARGV: clock override ('' = Redis TIME), o, n, then each window's owner
--       (1-based) and field
-- Reply: {now us, slots in use, TAT of each window}
local now = now_us(ARGV[1])
local o = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local now_ms = math.floor(now / 1000)
local out = {now, redis.call('ZCOUNT', KEYS[o + 1], '(' .. now_ms, '+inf')}
for i = 1, n do
  local key = KEYS[tonumber(ARGV[2 + 2 * i])]
  out[#out + 1] = tonumber(redis.call('HGET', key, ARGV[3 + 2 * i]) or '0')
end
return out
