-- Record this gateway replica as alive and count the live ones.
-- KEYS: replica set key; ARGV: clock override ('' = Redis TIME), instance id,
-- ttl ms. Reply: live replicas.
local now_ms = math.floor(now_us(ARGV[1]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('ZADD', KEYS[1], now_ms + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
