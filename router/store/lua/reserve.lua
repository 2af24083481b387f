-- Atomic check-all-caps-then-reserve for one bucket (a partner, or the funder's budget).
-- grants.lua (the grant lifecycle) is prepended when the script is loaded.
--
-- KEYS: 1..n   counters, one per cap: a string "count amount" (see grants.lua)
--       n+1    dedupe key of this applicant at this bucket (a placeholder if unused)
--       n+2    ledger stream of this bucket
--       n+3    grant record of this application at this bucket (a placeholder if unused)
--       n+4    the application's decision record (single-trip mode; a placeholder if unused)
--       n+5    pending grants of this bucket (ZSET by deadline, see grants.lua)
--       n+6    the store's event-time horizon (ZSET, member 'h'; one server only — on a
--              cluster the caller passes the horizon it knows and this is a placeholder)
-- ARGV: 1 amount, event_ms, dedupe_ms, use_dedupe, use_grant, record_ttl_ms, use_app,
--         pending_ms, known_horizon, late_ms (10 little-endian doubles: exact for integers
--         below 2^53, checked below; pending_ms 0 posts the grant at once, > 0 leaves it
--         pending that long; known_horizon -1 reads and advances the horizon key)
--       2 per cap: count_limit, amount_limit, counter_ttl_ms (3 doubles each; -1 = no limit)
--       3 entry JSON ("" for no ledger entry), 4 application id, 5 fingerprint (8 bytes),
--       6 decision record to store with a grant ("" for none), 7 the caller's token for a
--       pending grant (8 bytes), 8 ledger sequence of a grant posted at once, 9 the
--       pending grant's member (see grants.lua; built by the client, which settles by it)
--       (numbers travel as packed doubles: cheaper to unpack in Lua than text is to
--       parse, and cheaper to pack in Python than text is to format)
-- Returns {0} granted, {1} deduped, {2 + 2*i (+1 when the count is used up)} for cap i
-- refusing, {-3} when the event is more than late_ms older than the horizon (late), or
-- {-2, stored} when the application was already decided (single-trip mode).
-- Single-trip mode touches the application's key too, so it is for non-cluster servers.
--
-- Every argument is validated before the first write: Redis does not roll back a script
-- that fails half way. All keys carry the bucket's hash tag, so this is cluster-safe.

local MAX = 9007199254740991  -- 2^53 - 1: every amount and counter stays exact in Lua

-- The numbers arrive as doubles (struct.unpack): each must be an integer in [lo, MAX].
-- (NaN fails every comparison; checked inline, as a function call per number costs more
-- than the check.)
local function bad(name, v) error('ROUTER bad ' .. name .. ': ' .. tostring(v)) end

if #ARGV ~= 9 or #KEYS < 6 then
  error('ROUTER bad arity: ' .. #KEYS .. ' keys, ' .. #ARGV .. ' args')
end
local n = #KEYS - 6
if #ARGV[1] ~= 80 then error('ROUTER bad header: ' .. #ARGV[1] .. ' bytes') end
local amount, now, dedupe_ms, use_dedupe, use_grant, grant_ttl, use_app, pending_ms,
      known_horizon, late_ms = struct.unpack('<dddddddddd', ARGV[1])
if not (amount >= 1 and amount <= MAX and amount % 1 == 0) then bad('amount', amount) end
if not (now >= 0 and now <= MAX and now % 1 == 0) then bad('event_ms', now) end
if not (dedupe_ms >= 0 and dedupe_ms <= MAX and dedupe_ms % 1 == 0) then
  bad('dedupe_ms', dedupe_ms)
end
if not (grant_ttl >= 1 and grant_ttl <= MAX and grant_ttl % 1 == 0) then
  bad('grant_ttl_ms', grant_ttl)
end
if not (pending_ms >= 0 and pending_ms <= MAX and pending_ms % 1 == 0) then
  bad('pending_ms', pending_ms)
end
if not (known_horizon >= -1 and known_horizon <= MAX and known_horizon % 1 == 0) then
  bad('known_horizon', known_horizon)
end
if not (late_ms >= 0 and late_ms <= MAX and late_ms % 1 == 0) then bad('late_ms', late_ms) end
use_dedupe, use_grant, use_app = use_dedupe == 1, use_grant == 1, use_app == 1
local token = ARGV[7]
if pending_ms > 0 and (#token ~= 8 or #ARGV[9] < 10) then error('ROUTER bad token') end
local pendq, ledger = KEYS[n + 5], KEYS[n + 2]
local entry = ARGV[3]
local fp = ARGV[5]
if (use_app or ARGV[6] ~= '') and #fp ~= 8 then error('ROUTER bad fingerprint') end
if #ARGV[2] ~= 24 * n then
  error('ROUTER bad caps: ' .. #ARGV[2] .. ' bytes for ' .. n .. ' counters')
end
local limits = {}
for i = 1, n do
  local cl, al, ttl = struct.unpack('<ddd', ARGV[2], 24 * (i - 1) + 1)
  if not (cl >= -1 and cl <= MAX and cl % 1 == 0) then bad('count limit', cl) end
  if not (al >= -1 and al <= MAX and al % 1 == 0) then bad('amount limit', al) end
  if not (ttl >= 1 and ttl <= MAX and ttl % 1 == 0) then bad('counter ttl', ttl) end
  limits[i] = {cl, al, ttl}
end

-- Every value this decision reads, in one MGET: the counters (a string "count amount"
-- each; see counter() in grants.lua), the dedupe mark, the grant record and the
-- application's record (placeholders when unused read as nil). Each redis.call costs the
-- server more than the command itself, so one read and one write per key is the budget.
local reads = {}
for i = 1, n + 1 do reads[i] = KEYS[i] end
reads[n + 2], reads[n + 3] = KEYS[n + 3], KEYS[n + 4]
local v = redis.call('MGET', unpack(reads))

-- Already decided (a retry, or a concurrent caller that won): answer with that decision.
if use_app then
  local stored = v[n + 3]
  if stored then
    if string.sub(stored, 1, 8) ~= fp then error('ROUTER conflict: same id, other content') end
    return {-2, stored}
  end
end

-- One late-event rule (as every store): more than late_ms behind the newest event time
-- seen, refused; otherwise the horizon moves up to this event.
-- (In time order the horizon just moves up: one ZADD GT answers both questions.)
if known_horizon >= 0 then
  if now < known_horizon - late_ms then return {-3} end
elseif redis.call('ZADD', KEYS[n + 6], 'GT', 'CH', now, 'h') == 0 then
  local horizon = tonumber(redis.call('ZSCORE', KEYS[n + 6], 'h'))
  if now < horizon - late_ms then return {-3} end
end

-- A retry of a grant already made answers the same and applies nothing. (With the
-- application's record in play, that record already answered a retry above.)
if use_grant and not use_app and v[n + 2] then
  return {0}
end

local fresh, counts, amounts
local function check()
  fresh, counts, amounts = {}, {}, {}
  for i = 1, n do
    local c, a = counter(v[i])
    fresh[i], counts[i], amounts[i] = v[i] == false, c, a
    local cl, al = limits[i][1], limits[i][2]
    if cl >= 0 and c + 1 > cl then return {2 + 2 * (i - 1) + 1} end
    if al >= 0 and a + amount > al then return {2 + 2 * (i - 1)} end
    if a + amount > MAX then error('ROUTER amount overflow at cap ' .. i) end
  end
  if use_dedupe then
    local l = tonumber(v[n + 1])
    if l ~= nil and now - l < dedupe_ms then return {1} end
  end
  return nil
end

local refused = check()
-- Pending grants past their deadline (their callers never settled them) may hold the room
-- or the dedupe mark: void them, then look again. (Only a refusal needs the sweep; settle
-- calls sweep as they go.)
if refused and redis.call('ZCARD', pendq) > 0 and sweep(pendq, ledger, server_ms(), 8) > 0 then
  v = redis.call('MGET', unpack(reads, 1, n + 1))
  refused = check()
end
if refused then return refused end

for i = 1, n do
  -- Written whole from the values read above (the script is atomic). A string SET drops
  -- the key's expiry unless told to keep it; a new window's counter gets its expiry (end
  -- of window + grace; garbage collection only).
  local value = string.format('%d %d', counts[i] + 1, amounts[i] + amount)  -- (exact: < 2^53)
  if fresh[i] then
    redis.call('SET', KEYS[i], value, 'PX', limits[i][3])
  else
    redis.call('SET', KEYS[i], value, 'KEEPTTL')
  end
end
if use_dedupe then
  -- Kept late_ms past its window (events inside the horizon may still see it).
  redis.call('SET', KEYS[n + 1], now, 'PX', dedupe_ms + late_ms)
end
if pending_ms > 0 then
  redis.call('ZADD', pendq, server_ms() + pending_ms, ARGV[9])
elseif entry ~= '' then
  redis.call('XADD', ledger, '*', 'kind', 'post', 'app', ARGV[4], 'entry', entry, 'seq', ARGV[8])
end
if use_grant and not use_app then
  -- The grant record holds the decision record when one is given: a retry that finds the
  -- claim but no decision recovers the decision from here (see redis.py's protocol).
  local rec = ARGV[6]
  if rec == '' then rec = tostring(now) else rec = fp .. rec end
  redis.call('SET', KEYS[n + 3], rec, 'PX', grant_ttl)
end
if use_app then
  redis.call('SET', KEYS[n + 4], fp .. ARGV[6], 'PX', grant_ttl)
end
return {0}
