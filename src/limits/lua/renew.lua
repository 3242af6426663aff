-- Extend a held concurrency lease.
-- KEYS: slot key; ARGV: clock override ('' = Redis TIME), request id, lease ms.
-- Reply: 1 if the lease was held.
local now_ms = math.floor(now_us(ARGV[1]) / 1000)
local ms = tonumber(ARGV[3])
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
-- A lapsed lease is gone even if nothing has swept it yet.
if not held or tonumber(held) <= now_ms then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now_ms + ms, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ms * 2)
return 1
