-- Atomic check-all-caps-then-reserve for one bucket (a partner, or the funder's budget).
--
-- KEYS: 1..n   counter hashes (fields n = count, a = amount), one per cap
--       n+1    dedupe key of this applicant at this bucket (a placeholder if unused)
--       n+2    ledger stream of this bucket
--       n+3    grant record of this application at this bucket (a placeholder if unused)
--       n+4    the application's decision record (single-trip mode; a placeholder if unused)
-- ARGV: 1 "amount,event_ms,dedupe_ms,use_dedupe,use_grant,record_ttl_ms,use_app"
--       2 per cap "count_limit,amount_limit,counter_ttl_ms" joined by ";" (-1 = no limit)
--       3 entry JSON ("" for no ledger entry), 4 application id, 5 fingerprint (8 bytes),
--       6 decision record to store with a grant ("" for none)
--       (numbers travel packed in two arguments: per-argument cost dominates the client)
-- Returns {0} granted, {1} deduped, {2 + 2*i (+1 when the count is used up)} for cap i
-- refusing, or {-2, stored} when the application was already decided (single-trip mode).
-- Single-trip mode touches the application's key too, so it is for non-cluster servers.
--
-- Every argument is validated before the first write: Redis does not roll back a script
-- that fails half way. All keys carry the bucket's hash tag, so this is cluster-safe.

local MAX = 9007199254740991  -- 2^53 - 1: every amount and counter stays exact in Lua

local function int(v, name, lo)
  local x = tonumber(v)
  if x == nil or x ~= x or x ~= math.floor(x) or x < lo or x > MAX then
    error('ROUTER bad ' .. name .. ': ' .. tostring(v))
  end
  return x
end

local function fields(s, sep)
  local t = {}
  for part in string.gmatch(s, '([^' .. sep .. ']+)') do t[#t + 1] = part end
  return t
end

if #ARGV ~= 6 or #KEYS < 4 then
  error('ROUTER bad arity: ' .. #KEYS .. ' keys, ' .. #ARGV .. ' args')
end
local n = #KEYS - 4
local h = fields(ARGV[1], ',')
if #h ~= 7 then error('ROUTER bad header: ' .. tostring(ARGV[1])) end
local amount = int(h[1], 'amount', 1)
local now = int(h[2], 'event_ms', 0)
local dedupe_ms = int(h[3], 'dedupe_ms', 0)
local use_dedupe = h[4] == '1'
local use_grant = h[5] == '1'
local grant_ttl = int(h[6], 'grant_ttl_ms', 1)
local use_app = h[7] == '1'
local entry = ARGV[3]
local fp = ARGV[5]
if (use_app or ARGV[6] ~= '') and #fp ~= 8 then error('ROUTER bad fingerprint') end
local groups = fields(ARGV[2], ';')
if #groups ~= n then error('ROUTER bad caps: ' .. #groups .. ' for ' .. n .. ' counters') end
local limits = {}
for i = 1, n do
  local c = fields(groups[i], ',')
  if #c ~= 3 then error('ROUTER bad cap ' .. i .. ': ' .. groups[i]) end
  limits[i] = {int(c[1], 'count limit', -1), int(c[2], 'amount limit', -1),
               int(c[3], 'counter ttl', 1)}
end

-- Already decided (a retry, or a concurrent caller that won): answer with that decision.
if use_app then
  local stored = redis.call('GET', KEYS[n + 4])
  if stored then
    if string.sub(stored, 1, 8) ~= fp then error('ROUTER conflict: same id, other content') end
    return {-2, stored}
  end
end

-- A retry of a grant already made answers the same and applies nothing.
if use_grant and redis.call('EXISTS', KEYS[n + 3]) == 1 then
  return {0}
end

local fresh = {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'n', 'a')
  local c, a = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  fresh[i] = v[1] == false
  local cl, al = limits[i][1], limits[i][2]
  if cl >= 0 and c + 1 > cl then return {2 + 2 * (i - 1) + 1} end
  if al >= 0 and a + amount > al then return {2 + 2 * (i - 1)} end
  if a + amount > MAX then error('ROUTER amount overflow at cap ' .. i) end
end

if use_dedupe then
  local last = tonumber(redis.call('GET', KEYS[n + 1]))
  if last ~= nil and now - last < dedupe_ms then return {1} end
end

for i = 1, n do
  if fresh[i] then
    -- A new window's counter: written whole, with its expiry (end of window + grace).
    redis.call('HSET', KEYS[i], 'n', 1, 'a', amount)
    redis.call('PEXPIRE', KEYS[i], limits[i][3])
  else
    redis.call('HINCRBY', KEYS[i], 'n', 1)
    redis.call('HINCRBY', KEYS[i], 'a', amount)
  end
end
if use_dedupe then
  redis.call('SET', KEYS[n + 1], now, 'PX', dedupe_ms)
end
if entry ~= '' then
  redis.call('XADD', KEYS[n + 2], '*', 'app', ARGV[4], 'entry', entry)
end
if use_grant then
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
