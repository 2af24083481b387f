-- The grant lifecycle at one bucket, shared by reserve.lua and settle.lua (this file is
-- prepended to both when they are loaded; see router/store/redis.py).
--
-- A grant made inside a router's decision is *pending* until the router posts it (the
-- decision was handed back to its caller) or voids it (the caller was told something
-- else: a timeout, a lost reply, a crash before the answer). A pending grant counts
-- against every cap, like a posted one, so no cap is ever overrun while the outcome is
-- unknown; only a posted referral reaches the billing ledger.
--
-- Per bucket (all keys in the bucket's hash slot):
--   <b>:pendq  ZSET  member -> deadline (server ms). The member is built by the client:
--                    application id, NUL, the attempt's token (8 bytes), the entry's
--                    length (8 hex digits), the entry JSON a post bills ('' for a budget
--                    grant), then msgpack {amount, event_ms, {counter keys}, dedupe key or
--                    '', application record key or '', grant key or ''}: everything
--                    voiding must undo. The client knows the member it sent, so it
--                    settles by member even when the reply was lost. Past the deadline
--                    the grant is voided by the next refused reservation or settle call
--                    at this bucket (a client that died between send and reply never
--                    posts).
--   <b>:ledger STREAM kind=post (a billable referral: app, entry, seq) or kind=void (app,
--                    why); ``seq`` is the order the router handed decisions back in
--   <b>:v:<token> STRING why a grant was voided (a day): a post that finds its grant gone
--                    tells "voided before its post" (the caller got an answer the ledger
--                    does not bill) from "posted by an earlier send" (a resent post)

-- A counter's value: "count amount" (two integers; a missing key is 0 0). One string per
-- cap, so a reservation reads all of them in one MGET.
local function counter(v)
  if not v then return 0, 0 end
  local sp = string.find(v, ' ', 1, true)
  return tonumber(string.sub(v, 1, sp - 1)), tonumber(string.sub(v, sp + 1))
end

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- (application id, entry JSON, where the msgpack spec starts) of a member: string cuts
-- only, so a post costs no unpacking.
local function parts(member)
  local nul = string.find(member, '\0', 1, true)
  local elen = tonumber(string.sub(member, nul + 9, nul + 16), 16)
  return string.sub(member, 1, nul - 1), string.sub(member, nul + 17, nul + 16 + elen),
         nul + 17 + elen
end

-- Undo a pending grant (its member already removed from the queue): release its counters
-- and dedupe mark, drop the application's record and grant key (a retry then decides
-- afresh), and note the void on the ledger.
-- The void mark of a member's grant (the bucket's key base, from its ledger key).
local function void_mark(ledger, member)
  local nul = string.find(member, '\0', 1, true)
  return string.sub(ledger, 1, -8) .. ':v:' .. string.sub(member, nul + 1, nul + 8)
end

local function void_member(ledger, member, why)
  redis.call('SET', void_mark(ledger, member), why, 'PX', 86400000)
  local app, entry, at = parts(member)
  local s = cmsgpack.unpack(string.sub(member, at))
  local amount = s[1]
  for _, c in ipairs(s[3]) do
    -- A counter that expired (garbage collection only) has nothing left to release.
    local v = redis.call('GET', c)
    if v then
      local n, a = counter(v)
      redis.call('SET', c, string.format('%d %d', n - 1, a - amount), 'KEEPTTL')
    end
  end
  if s[4] ~= '' and tonumber(redis.call('GET', s[4])) == s[2] then redis.call('DEL', s[4]) end
  if s[5] ~= '' then redis.call('DEL', s[5]) end
  if s[6] ~= '' then redis.call('DEL', s[6]) end
  if entry ~= '' then
    redis.call('XADD', ledger, '*', 'kind', 'void', 'app', app, 'why', why)
  end
end

-- Void the grants at this bucket whose deadline has passed (a few per call).
local function sweep(pendq, ledger, now, limit)
  local due = redis.call('ZRANGEBYSCORE', pendq, '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    redis.call('ZREM', pendq, member)
    void_member(ledger, member, 'expired')
  end
  return #due
end
