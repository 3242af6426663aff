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
-- Requests of the same shape (the same windows, limits and leases, whoever
-- sends them) share one description, sent once per call.
-- ARGV: clock override ('' = Redis TIME), the number of shapes, the shapes,
--   then the entries.
--   A shape: o owners, n windows, e extra lease sets, model slot limit (0 =
--     none), lease ms, reservation ttl ms, q (1 when the model has a shared
--     queue, see queue.lua); per owner: its number of windows w
--     and its longest window (ms); per window: field, tolerance (us), and what
--     one request adds to it if it counts requests ('' if it counts tokens);
--     each extra lease set's limit.
--   An entry: 'a' (admit) or 'c' (claim: admit a request the queue granted a
--     slot, see queue.lua), its shape (1-based), request id, the reservation's
--     record ('h:' and what each window is charged for the reserved tokens, in
--     us, comma-separated, 0 for a window counting requests); or 's'
--     (settle), its shape, request id, the number of lease sets to release l,
--     what the actual tokens cost in each window (the same form).
-- KEYS, entry after entry: an admit's owner hashes (o), its reservation key,
--   the model's lease set, the extra lease sets (e), the queue's entries (when
--   q is 1); a settle's owner hashes
--   (o), its reservation key, the lease sets to release (l)
-- Reply: {now us, then per entry}; an admit gives {kind, blocking index
--   (1-based, over the windows in the order described, 0 = none), retry after
--   us, the TAT of each window (the new ones when admitted)}, kind 0 admitted,
--   1 limited, 2 never fits, 3 no concurrency slot (the blocking index then
--   names the full lease set); a settle gives 1 when settled now, 0 when there
--   was nothing to settle.
-- The queue: while requests wait in it, an admission ('a') gets no slot (3,
--   blocking 1): it joins the queue rather than go ahead of it. A claim ('c')
--   keeps the slots the queue holds for it and gives them back when its
--   windows refuse it; one whose grant lapsed is an admission again.
local ARGV, KEYS, tonumber, call, unpack = ARGV, KEYS, tonumber, redis.call, unpack
local gmatch, byte, format, ceil = string.gmatch, string.byte, string.format, math.ceil
local now = now_us(ARGV[1])
local now_ms = math.floor(now / 1000)
local out = {now}
local no = 1
local scratch = {}

-- The shapes.
local shapes = {}
local a = 3
for s = 1, tonumber(ARGV[2]) do
  local o, n, e = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local shape = {
    o = o, n = n, e = e,
    slot_limit = tonumber(ARGV[a + 3]), lease_ms = tonumber(ARGV[a + 4]), ttl = ARGV[a + 5],
    q = ARGV[a + 6] == '1',
    w = {}, longest = {}, field = {}, tau = {}, fixed = {}, limits = {},
  }
  a = a + 7
  for j = 1, o do
    shape.w[j] = tonumber(ARGV[a])
    shape.longest[j] = tonumber(ARGV[a + 1])
    a = a + 2
  end
  for i = 1, n do
    shape.field[i] = ARGV[a]
    shape.tau[i] = tonumber(ARGV[a + 1])
    shape.fixed[i] = tonumber(ARGV[a + 2])
    a = a + 3
  end
  for j = 1, e do
    shape.limits[j] = tonumber(ARGV[a])
    a = a + 1
  end
  shapes[tostring(s)] = shape
end

-- Owner hashes: the TATs read or written so far (by field), the expiry as
-- read, the longest window asked for, and which changed (each written once at
-- the end, with every window read).
local tats, expiry, slack, dirty, dirty_keys = {}, {}, {}, {}, {}

-- The hashes of an entry's owners (KEYS from k), each with the fields not read
-- yet (and its expiry) read in one HMGET.
local hashes, hs = {}, {}
local function load(shape, k)
  local i = 0
  for j = 1, shape.o do
    local key = KEYS[k + j - 1]
    local h = tats[key]
    local m = 0
    if h == nil then
      h = {}
      tats[key] = h
      m = 1
      scratch[1] = 'x'
    end
    local first_field = i
    for _ = 1, shape.w[j] do
      i = i + 1
      local f = shape.field[i]
      if h[f] == nil then
        m = m + 1
        scratch[m] = f
      end
    end
    if (slack[key] or 0) < shape.longest[j] then slack[key] = shape.longest[j] end
    if m > 0 then
      local values = call('HMGET', key, unpack(scratch, 1, m))
      local from = 1
      if expiry[key] == nil then
        expiry[key] = tonumber(values[1] or '0')
        from = 2
      end
      for v = from, m do h[scratch[v]] = tonumber(values[v] or '0') end
    end
    for q = first_field + 1, i do
      hashes[q] = key
      hs[q] = h
    end
  end
end

local function mark(key)
  if not dirty[key] then
    dirty[key] = true
    dirty_keys[#dirty_keys + 1] = key
  end
end

-- Leases: how many each set holds (counted once), the leases to add (with
-- their expiry as a string, made once per lease length), and the longest lease
-- asked for in each set.
local held, adds, add_keys, longest_lease, lease_until = {}, {}, {}, {}, {}
local function holding(key)
  local c = held[key]
  if c == nil then
    c = call('ZCARD', key)
    held[key] = c
  end
  return c
end

-- Whether requests wait in a queue (read once per call).
local waiting = {}
local function queued(key)
  local w = waiting[key]
  if w == nil then
    w = call('EXISTS', key) == 1
    waiting[key] = w
  end
  return w
end
-- The lease sets in which a claim holds a granted slot (index 0 = the model's).
local granted = {}

local k = 1
local incs = {}
local argc = #ARGV
while a <= argc do
  local kind = ARGV[a]
  local shape = shapes[ARGV[a + 1]]
  local request_id = ARGV[a + 2]
  local o, n = shape.o, shape.n
  if kind == 's' then
    local l = tonumber(ARGV[a + 3])
    for j = k + o + 1, k + o + l do
      local removed = call('ZREM', KEYS[j], request_id)
      local c = held[KEYS[j]]
      if c ~= nil then held[KEYS[j]] = c - removed end
    end
    local record = call('GETDEL', KEYS[k + o])
    if not record then
      no = no + 1; out[no] = 0
    elseif byte(record, 1) ~= 104 or byte(record, 2) ~= 58 then
      -- Not 'h:': admitted by an earlier version, into the windows it kept in
      -- keys of their own: the request keeps what it reserved there.
      no = no + 1; out[no] = 1
    else
      no = no + 1; out[no] = 1
      load(shape, k)
      local reserved = gmatch(record, '%d+')
      local i = 0
      for cost in gmatch(ARGV[a + 4], '%d+') do
        i = i + 1
        local delta = tonumber(cost) - tonumber(reserved() or '0')
        if delta ~= 0 then
          local field = shape.field[i]
          local h = hs[i]
          local t = h[field]
          local new_tat = t
          if delta > 0 then
            if t < now then new_tat = now + delta else new_tat = t + delta end
          elseif t > now then
            new_tat = t + delta
            if new_tat < now then new_tat = now end
          end
          if new_tat ~= t then
            h[field] = new_tat
            mark(hashes[i])
          end
        end
      end
    end
    a = a + 5
    k = k + o + 1 + l
  else
    local e = shape.e
    local record = ARGV[a + 3]
    local fields, taus, fixed = shape.field, shape.tau, shape.fixed
    load(shape, k)
    local i = 0
    for inc in gmatch(record, '%d+') do
      i = i + 1
      incs[i] = fixed[i] or tonumber(inc)
    end
    -- The decision, over every window in the order described.
    local result, blocking, worst, never = 0, 0, 0, 0
    for w = 1, n do
      local inc, tau = incs[w], taus[w]
      local b = hs[w][fields[w]]
      if b < now then b = now end
      if inc > tau and never == 0 then never = w end
      local wait = b + inc - (now + tau)
      if wait > worst then worst = wait; blocking = w end
    end
    -- Lease sets and their limits: the model's (0 = none), then the extras.
    local first_slot = k + o + 1
    local claim = kind == 'c'
    if never > 0 then
      result, blocking, worst = 2, never, 0
    elseif shape.q and not claim and queued(KEYS[first_slot + e + 1]) then
      result, blocking, worst = 3, 1, 0
    else
      for j = 0, e do
        local key = KEYS[first_slot + j]
        local limit = shape.slot_limit
        if j > 0 then limit = shape.limits[j] end
        granted[j] = false
        if limit > 0 and claim then
          local score = call('ZSCORE', key, request_id)
          granted[j] = score ~= false and score ~= nil and tonumber(score) > now_ms
          if j == 0 and not granted[0] and shape.q and queued(KEYS[first_slot + e + 1]) then
            -- Its grant lapsed: while others wait it goes back in line, like any request.
            result, blocking, worst = 3, 1, 0
            break
          end
        end
        if limit > 0 and not granted[j] and holding(key) >= limit then
          -- Full: drop lapsed leases (only now, to keep the common path short) and count again.
          held[key] = held[key] - call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
          if held[key] >= limit then
            result, blocking, worst = 3, j + 1, 0
            break
          end
        end
      end
    end
    if result == 0 and blocking > 0 then result = 1 end
    if claim and result ~= 0 then
      -- Refused after all: the slots the queue held for it go back.
      for j = 0, e do
        local key = KEYS[first_slot + j]
        local removed = call('ZREM', key, request_id)
        if held[key] ~= nil then held[key] = held[key] - removed end
      end
    end
    no = no + 1; out[no] = result
    no = no + 1; out[no] = blocking
    no = no + 1; out[no] = worst
    -- The TATs to answer with, written when admitted.
    for w = 1, n do
      local field = fields[w]
      local h = hs[w]
      local t = h[field]
      if result == 0 then
        if t < now then t = now end
        t = t + incs[w]
        h[field] = t
        mark(hashes[w])
      end
      no = no + 1
      out[no] = t
    end
    if result == 0 then
      call('SET', KEYS[k + o], record, 'PX', shape.ttl)
      local lease_ms = shape.lease_ms
      for j = 0, e do
        local limit = shape.slot_limit
        if j > 0 then limit = shape.limits[j] end
        if limit > 0 then
          local key = KEYS[first_slot + j]
          local list = adds[key]
          if list == nil then
            list = {}
            adds[key] = list
            add_keys[#add_keys + 1] = key
            longest_lease[key] = 0
          end
          local score = lease_until[lease_ms]
          if score == nil then
            score = format('%d', now_ms + lease_ms)
            lease_until[lease_ms] = score
          end
          list[#list + 1] = score
          list[#list + 1] = request_id
          if lease_ms > longest_lease[key] then longest_lease[key] = lease_ms end
          if not (claim and granted[j]) then held[key] = holding(key) + 1 end
        end
      end
    end
    a = a + 4
    k = first_slot + e + 1
    if shape.q then k = k + 1 end
  end
end

-- Each changed hash: one HSET of the windows read (as they stand now), and
-- its expiry moved when a TAT passed it.
for _, key in ipairs(dirty_keys) do
  local h = tats[key]
  local m, latest = 0, 0
  for field, v in pairs(h) do
    if v > 0 then
      if v > latest then latest = v end
      scratch[m + 1] = field
      scratch[m + 2] = format('%d', v)
      m = m + 2
    end
  end
  local latest_ms = ceil(latest / 1000)
  if latest_ms > expiry[key] then
    local until_ms = format('%d', latest_ms + slack[key])
    scratch[m + 1] = 'x'
    scratch[m + 2] = until_ms
    call('HSET', key, unpack(scratch, 1, m + 2))
    call('PEXPIREAT', key, until_ms)
  else
    call('HSET', key, unpack(scratch, 1, m))
  end
end
for _, key in ipairs(add_keys) do
  call('ZADD', key, unpack(adds[key]))
  call('PEXPIRE', key, longest_lease[key] * 2)
end
return out
