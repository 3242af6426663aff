-- Shared helpers, prepended to every token-rate-limiter script. The GCRA
-- arithmetic itself (increments, tolerances, window standings) is done exactly
-- by the gateway (src/limits/gcra.ts); the scripts only read, compare, add and
-- write integer microseconds, all below 2^53.

-- The clock: Redis TIME, one clock for every replica. A non-empty override
-- (microseconds) is only ever sent by test harnesses that freeze time.
local function now_us(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
