-- Extend a held concurrency lease.
-- KEYS: slot key; ARGV: clock override ('' = Redis TIME), request id, lease ms.
-- Reply: 1 if the lease was held.
local now_ms = math.floor(now_us(ARGV[1]) / 1000)
local ms = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now_ms + ms, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ms * 2)
return 1
