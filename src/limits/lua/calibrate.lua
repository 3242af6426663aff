-- Self-calibration of one model's prompt estimate, shared by every replica.
-- KEYS: the model's calibration hash. ARGV: operation ('fold', 'pin', 'reset'),
-- for fold the sum of the batch's log ratios and their count, for pin the ratio
-- ('' unpins); then alpha, warm-up samples and the largest |log ratio|.
-- Mirrors src/limits/calibration.ts. Reply: {mean, samples, pinned or ''}
-- as strings (Lua numbers would be truncated to integers in the reply).
local key = KEYS[1]
local op = ARGV[1]
if op == 'reset' then
  redis.call('DEL', key)
elseif op == 'pin' then
  if ARGV[2] == '' then
    redis.call('HDEL', key, 'pinned')
  else
    redis.call('HSET', key, 'pinned', ARGV[2])
  end
elseif op == 'fold' then
  local sum = tonumber(ARGV[2])
  local count = tonumber(ARGV[3])
  local alpha = tonumber(ARGV[4])
  local warmup = tonumber(ARGV[5])
  local bound = tonumber(ARGV[6])
  if count > 0 then
    local mean = tonumber(redis.call('HGET', key, 'mean') or '0')
    local samples = tonumber(redis.call('HGET', key, 'samples') or '0')
    local batch_mean = sum / count
    -- The part of the batch still in the warm-up is averaged plainly, the rest weighted.
    local plain = math.min(count, math.max(0, warmup - samples))
    if plain > 0 then
      mean = mean + (plain / (samples + plain)) * (batch_mean - mean)
    end
    local weighted = count - plain
    if weighted > 0 then
      mean = mean + (1 - (1 - alpha) ^ weighted) * (batch_mean - mean)
    end
    if mean > bound then mean = bound elseif mean < -bound then mean = -bound end
    redis.call('HSET', key, 'mean', string.format('%.17g', mean), 'samples', samples + count)
  end
end
local state = redis.call('HMGET', key, 'mean', 'samples', 'pinned')
return {state[1] or '0', state[2] or '0', state[3] or ''}
