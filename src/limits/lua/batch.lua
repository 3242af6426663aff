-- Settle and admit the requests of one model that reached a gateway in the same
-- event-loop turn, one after another in the order they came, as if each were a
-- call of its own at the same instant of Redis TIME. Each admission is
-- all-or-nothing over every window and lease set; each settlement is applied
-- once per request id.
--
-- An owner (a user, a tenant, the model) keeps all its windows in one hash:
-- one field per window holding its TAT, and 'x', the hash's expiry (ms), kept
-- at or after every TAT so that no window is forgotten while it still holds
-- usage. Each hash is read once (HMGET) and written once (HSET) per call; its
-- expiry moves (PEXPIREAT) only when a TAT passes it, then to that TAT plus
-- the owner's longest window, so a busy owner rarely pays for it.
-- The gateway works out each window's increment and tolerance exactly (integer
-- microseconds); the script only reads, compares, adds and writes.
--
-- ARGV: clock override ('' = Redis TIME), then the entries, each beginning
--   with its kind:
--   'a' (admit): o owners, n windows, e extra lease sets, the reservation's
--       record (what each window is charged for the reserved tokens, 'h:' and
--       comma-separated), model slot limit (0 = none), request id, lease ms,
--       reservation ttl ms; each owner's longest window (ms); for each window
--       its owner (1-based), field, increment and tolerance (us); each extra
--       lease set's limit
--   's' (settle): o owners, n windows, l lease sets, request id; each
--       owner's longest window (ms); for each window its owner, field, and
--       what the actual tokens cost there (us; 0 for a window counting requests)
-- KEYS, entry after entry: an admit's owner hashes (o), its reservation key,
--   the model's lease set, the extra lease sets (e); a settle's owner hashes
--   (o), its reservation key, the lease sets to release (l)
-- Reply: {now us, then per entry}; an admit gives {kind, blocking index
--   (1-based, 0 = none), retry after us, the TAT of each window (the new ones
--   when admitted)}, kind 0 admitted, 1 limited, 2 never fits, 3 no
--   concurrency slot (the blocking index then names the full lease set); a
--   settle gives 1 when settled now, 0 when there was nothing to settle.
local now = now_us(ARGV[1])
local now_ms = math.floor(now / 1000)
local out = {now}

-- Owner hashes: the TATs read or written so far, the expiry as read, the
-- longest window asked for, and the fields changed (written at the end).
local tats, expiry, slack, dirty, dirty_keys = {}, {}, {}, {}, {}
-- Reads the fields of `key` not read yet (and its expiry) in one HMGET.
local function load(key, fields)
  local h = tats[key]
  if h == nil then
    h = {}
    tats[key] = h
  end
  local missing = {}
  for i = 1, #fields do
    local f = fields[i]
    if h[f] == nil then
      h[f] = false
      missing[#missing + 1] = f
    end
  end
  if expiry[key] == nil then missing[#missing + 1] = 'x' end
  if #missing == 0 then return end
  local values = redis.call('HMGET', key, unpack(missing))
  for i = 1, #missing do
    local v = tonumber(values[i] or '0')
    if missing[i] == 'x' then expiry[key] = v else h[missing[i]] = v end
  end
end
local function set_tat(key, field, v)
  tats[key][field] = v
  local d = dirty[key]
  if d == nil then
    d = {}
    dirty[key] = d
    dirty_keys[#dirty_keys + 1] = key
  end
  d[field] = true
end

-- Leases: how many each set holds (counted once), the leases to add, and the
-- longest lease asked for in each set.
local held, adds, add_keys, longest = {}, {}, {}, {}
local function holding(key)
  local c = held[key]
  if c == nil then
    c = redis.call('ZCARD', key)
    held[key] = c
  end
  return c
end

-- Reads an entry's owners and windows: the owner hashes (loaded), and per
-- window its hash key, field and the two numbers that follow it.
local function windows_of(a, k, o, n, base)
  local fields_by_owner = {}
  for j = 1, o do
    fields_by_owner[j] = {}
    local s = tonumber(ARGV[a + j - 1])
    if s > (slack[KEYS[k + j - 1]] or 0) then slack[KEYS[k + j - 1]] = s end
  end
  local keys, fields, x, y = {}, {}, {}, {}
  for i = 1, n do
    local at = base + (i - 1) * 4
    local owner = tonumber(ARGV[at])
    keys[i] = KEYS[k + owner - 1]
    fields[i] = ARGV[at + 1]
    x[i] = tonumber(ARGV[at + 2])
    y[i] = tonumber(ARGV[at + 3])
    local list = fields_by_owner[owner]
    list[#list + 1] = fields[i]
  end
  for j = 1, o do load(KEYS[k + j - 1], fields_by_owner[j]) end
  return keys, fields, x, y
end

local a, k = 2, 1
while a <= #ARGV do
  local kind = ARGV[a]
  local o = tonumber(ARGV[a + 1])
  local n = tonumber(ARGV[a + 2])
  if kind == 's' then
    local l = tonumber(ARGV[a + 3])
    local request_id = ARGV[a + 4]
    local reservation = KEYS[k + o]
    for j = k + o + 1, k + o + l do
      local removed = redis.call('ZREM', KEYS[j], request_id)
      if held[KEYS[j]] ~= nil then held[KEYS[j]] = held[KEYS[j]] - removed end
    end
    local record = redis.call('GETDEL', reservation)
    -- A window's triple here is owner, field, actual cost (the fourth slot unused).
    local base = a + 5 + o
    if not record then
      out[#out + 1] = 0
    elseif string.sub(record, 1, 2) ~= 'h:' then
      -- Admitted by an earlier version, into the windows it kept in keys of
      -- their own: the request keeps what it reserved there.
      out[#out + 1] = 1
    else
      out[#out + 1] = 1
      local reserved = {}
      for inc in string.gmatch(string.sub(record, 3), '[^,]+') do reserved[#reserved + 1] = tonumber(inc) end
      local fields_by_owner = {}
      for j = 1, o do
        fields_by_owner[j] = {}
        local s = tonumber(ARGV[a + 4 + j])
        if s > (slack[KEYS[k + j - 1]] or 0) then slack[KEYS[k + j - 1]] = s end
      end
      for i = 1, n do
        local owner = tonumber(ARGV[base + (i - 1) * 3])
        local list = fields_by_owner[owner]
        list[#list + 1] = ARGV[base + (i - 1) * 3 + 1]
      end
      for j = 1, o do load(KEYS[k + j - 1], fields_by_owner[j]) end
      for i = 1, n do
        local at = base + (i - 1) * 3
        local key = KEYS[k + tonumber(ARGV[at]) - 1]
        local field = ARGV[at + 1]
        local delta = tonumber(ARGV[at + 2]) - (reserved[i] or 0)
        if delta ~= 0 then
          local t = tats[key][field]
          local new_tat = t
          if delta > 0 then
            if t < now then new_tat = now + delta else new_tat = t + delta end
          elseif t > now then
            new_tat = t + delta
            if new_tat < now then new_tat = now end
          end
          if new_tat ~= t then set_tat(key, field, new_tat) end
        end
      end
    end
    a = base + 3 * n
    k = k + o + 1 + l
  else
    local e = tonumber(ARGV[a + 3])
    local record = ARGV[a + 4]
    local slot_limit = tonumber(ARGV[a + 5])
    local request_id = ARGV[a + 6]
    local lease_ms = tonumber(ARGV[a + 7])
    local reservation_ttl_ms = ARGV[a + 8]
    local base = a + 9 + o
    local keys, fields, incs, taus = windows_of(a + 9, k, o, n, base)
    local result, blocking, worst, never = 0, 0, 0, 0
    local new_tats = {}
    for i = 1, n do
      local t = tats[keys[i]][fields[i]]
      if incs[i] > taus[i] and never == 0 then never = i end
      local b = t
      if b < now then b = now end
      new_tats[i] = b + incs[i]
      local wait = new_tats[i] - (now + taus[i])
      if wait > worst then worst = wait; blocking = i end
    end
    -- Lease sets and their limits: the model's (0 = none), then the extras.
    local first_slot = k + o + 1
    local limits_at = base + 4 * n - 1
    if never > 0 then
      result, blocking, worst = 2, never, 0
    else
      for j = 0, e do
        local key = KEYS[first_slot + j]
        local limit = slot_limit
        if j > 0 then limit = tonumber(ARGV[limits_at + j]) end
        if limit > 0 and holding(key) >= limit then
          -- Full: drop lapsed leases (only now, to keep the common path short) and count again.
          held[key] = held[key] - redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
          if held[key] >= limit then
            result, blocking, worst = 3, j + 1, 0
            break
          end
        end
      end
    end
    if result == 0 and blocking > 0 then result = 1 end
    out[#out + 1] = result
    out[#out + 1] = blocking
    out[#out + 1] = worst
    if result == 0 then
      for i = 1, n do
        set_tat(keys[i], fields[i], new_tats[i])
        out[#out + 1] = new_tats[i]
      end
      redis.call('SET', KEYS[k + o], record, 'PX', reservation_ttl_ms)
      for j = 0, e do
        local limit = slot_limit
        if j > 0 then limit = tonumber(ARGV[limits_at + j]) end
        if limit > 0 then
          local key = KEYS[first_slot + j]
          local list = adds[key]
          if list == nil then
            list = {}
            adds[key] = list
            add_keys[#add_keys + 1] = key
            longest[key] = 0
          end
          list[#list + 1] = now_ms + lease_ms
          list[#list + 1] = request_id
          if lease_ms > longest[key] then longest[key] = lease_ms end
          held[key] = holding(key) + 1
        end
      end
    else
      for i = 1, n do out[#out + 1] = tats[keys[i]][fields[i]] end
    end
    a = limits_at + e + 1
    k = first_slot + e + 1
  end
end

-- Each changed hash: one HSET of its changed windows, and its expiry moved
-- when a TAT passed it.
for _, key in ipairs(dirty_keys) do
  local h = tats[key]
  local args = {}
  local latest = 0
  for field in pairs(dirty[key]) do
    local v = h[field]
    if v > latest then latest = v end
    args[#args + 1] = field
    args[#args + 1] = string.format('%d', v)
  end
  local latest_ms = math.ceil(latest / 1000)
  if latest_ms > expiry[key] then
    local until_ms = string.format('%d', latest_ms + (slack[key] or 0))
    args[#args + 1] = 'x'
    args[#args + 1] = until_ms
    redis.call('HSET', key, unpack(args))
    redis.call('PEXPIREAT', key, until_ms)
  else
    redis.call('HSET', key, unpack(args))
  end
end
for _, key in ipairs(add_keys) do
  redis.call('ZADD', key, unpack(adds[key]))
  redis.call('PEXPIRE', key, longest[key] * 2)
end
return out
