-- Shared GCRA arithmetic, prepended to every token-rate-limiter script.
-- Exact integer math on doubles: every intermediate stays below 2^53.

-- floor(n / d) for integers n, d >= 0 below 2^53, correcting float rounding.
local function floor_div(n, d)
  local q = math.floor(n / d)
  if q * d > n then q = q - 1 elseif (q + 1) * d <= n then q = q + 1 end
  return q
end

-- floor(a * b / d) and whether it had a remainder, exact for a < 2^53 and
-- b, d < 2^52: b = q*d + r, and a*r/d is built bit by bit with the running
-- remainder kept below d.
local function mul_div(a, b, d)
  local q = floor_div(b, d)
  local r = b - q * d
  local hq, hr = 0, 0
  local ar = a * r
  if ar < 9007199254740992 then
    -- a*r is exact: one division.
    hq = floor_div(ar, d)
    hr = ar - hq * d
  elseif r > 0 and a > 0 then
    local bit = 1
    while bit * 2 <= a do bit = bit * 2 end
    local rest = a
    while bit >= 1 do
      hq = hq * 2
      hr = hr * 2
      if hr >= d then hr = hr - d; hq = hq + 1 end
      if rest >= bit then
        rest = rest - bit
        hr = hr + r
        if hr >= d then hr = hr - d; hq = hq + 1 end
      end
      bit = bit / 2
    end
  end
  return a * q + hq, hr > 0
end

local function mul_div_ceil(a, b, d)
  local q, rem = mul_div(a, b, d)
  if rem then return q + 1 end
  return q
end

local function mul_div_floor(a, b, d)
  local q = mul_div(a, b, d)
  return q
end

-- The clock: Redis TIME, one clock for every replica. A non-empty override
-- (microseconds) is only ever sent by test harnesses that freeze time.
local function now_us(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Standing of one window: remaining, used, reset (us).
local function window_status(tat, now, w, l, b)
  local base = tat
  if base < now then base = now end
  local backlog = base - now
  local tau = mul_div_ceil(b, w, l)
  local slack = tau - backlog
  if slack < 0 then slack = 0 end
  local remaining = mul_div_floor(slack, l, w)
  if remaining > b then remaining = b end
  local used = mul_div_ceil(backlog, l, w)
  if used > b then used = b end
  return remaining, used, backlog
end

-- Sets a window's TAT, expiring when it is reached (rounded up to the ms).
local function store_tat(key, tat, now)
  if tat > now then
    redis.call('SET', key, string.format('%.0f', tat), 'PXAT', string.format('%.0f', math.ceil(tat / 1000)))
  end
end
