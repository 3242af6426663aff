-- Self-calibration of one model's prompt estimate, shared by every replica.
-- Mirrors src/limits/calibration.ts.
-- KEYS: the calibration hash, the sending replica's last-batch key.
-- ARGV[1]: 'fold', 'read', 'pin' or 'reset'.
--   fold: epoch, seq, count, alpha, warm-up samples, largest |log ratio|,
--         sender ttl ms, k, then k sums of log ratios and k sums of residuals.
--   pin: the ratio ('' unpins).
-- Reply: {samples, pinned or '', epoch, k, k means, k residuals}, as strings
-- (Lua numbers would be truncated to integers in the reply).
local key = KEYS[1]
local op = ARGV[1]

local function fold_mean(mean, samples, batch_mean, count, alpha, warmup)
  local plain = math.min(count, math.max(0, warmup - samples))
  if plain > 0 then
    mean = mean + (plain / (samples + plain)) * (batch_mean - mean)
  end
  local weighted = count - plain
  if weighted > 0 then
    mean = mean + (1 - (1 - alpha) ^ weighted) * (batch_mean - mean)
  end
  return mean
end

if op == 'reset' then
  local epoch = tonumber(redis.call('HGET', key, 'epoch') or '0') + 1
  redis.call('DEL', key)
  redis.call('HSET', key, 'epoch', epoch)
elseif op == 'pin' then
  if ARGV[2] == '' then
    redis.call('HDEL', key, 'pinned')
  else
    redis.call('HSET', key, 'pinned', ARGV[2])
  end
elseif op == 'fold' then
  local epoch = tonumber(ARGV[2])
  local seq = tonumber(ARGV[3])
  local count = tonumber(ARGV[4])
  local alpha = tonumber(ARGV[5])
  local warmup = tonumber(ARGV[6])
  local bound = tonumber(ARGV[7])
  local ttl = tonumber(ARGV[8])
  local k = tonumber(ARGV[9])
  local current = tonumber(redis.call('HGET', key, 'epoch') or '0')
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  if seq > last then
    redis.call('SET', KEYS[2], seq, 'PX', ttl)
    if count > 0 and epoch == current then
      local samples = tonumber(redis.call('HGET', key, 'samples') or '0')
      for i = 1, k do
        local m = tonumber(redis.call('HGET', key, 'm' .. i) or '0')
        local r = tonumber(redis.call('HGET', key, 'r' .. i) or '0')
        m = fold_mean(m, samples, tonumber(ARGV[9 + i]) / count, count, alpha, warmup)
        if m > bound then m = bound elseif m < -bound then m = -bound end
        r = fold_mean(r, samples, tonumber(ARGV[9 + k + i]) / count, count, alpha, warmup)
        redis.call('HSET', key, 'm' .. i, string.format('%.17g', m), 'r' .. i, string.format('%.17g', r))
      end
      redis.call('HSET', key, 'samples', samples + count, 'k', k, 'epoch', current)
    end
  end
end

local head = redis.call('HMGET', key, 'samples', 'pinned', 'epoch', 'k')
local k = tonumber(head[4] or '0')
local reply = {head[1] or '0', head[2] or '', head[3] or '0', tostring(k)}
for i = 1, k do
  reply[#reply + 1] = redis.call('HGET', key, 'm' .. i) or '0'
end
for i = 1, k do
  reply[#reply + 1] = redis.call('HGET', key, 'r' .. i) or '0'
end
return reply
