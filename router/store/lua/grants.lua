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
--   <b>:pend   HASH  application id -> spec (cmsgpack), what voiding needs to undo
--   <b>:pendq  ZSET  application id -> deadline (server ms); past it the grant is voided
--                    by the next reservation or settle call at this bucket (a client that
--                    died between send and reply never posts)
--   <b>:ledger STREAM kind=post (a billable referral: app, entry, seq) or kind=void (app,
--                    why); ``seq`` is the order the router handed decisions back in
-- spec = {token, amount, event_ms, {counter keys}, dedupe key or '', previous dedupe value
--         or '', dedupe_ms, entry JSON or '', application record key or '', grant key or ''}

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Undo a pending grant: release its counters and dedupe mark, drop the application's
-- record and grant key (a retry then decides afresh), and note the void on the ledger.
local function void_grant(pend, pendq, ledger, app, spec, why)
  local s = cmsgpack.unpack(spec)
  local amount = s[2]
  for _, c in ipairs(s[4]) do
    -- A counter that expired (garbage collection only) has nothing left to release.
    if redis.call('EXISTS', c) == 1 then
      redis.call('HINCRBY', c, 'n', -1)
      redis.call('HINCRBY', c, 'a', -amount)
    end
  end
  local dk = s[5]
  if dk ~= '' and tonumber(redis.call('GET', dk)) == s[3] then
    if s[6] ~= '' then
      redis.call('SET', dk, s[6], 'PX', s[7])
    else
      redis.call('DEL', dk)
    end
  end
  if s[9] ~= '' then redis.call('DEL', s[9]) end
  if s[10] ~= '' then redis.call('DEL', s[10]) end
  if s[8] ~= '' then
    redis.call('XADD', ledger, '*', 'kind', 'void', 'app', app, 'why', why)
  end
  redis.call('HDEL', pend, app)
  redis.call('ZREM', pendq, app)
end

-- Post a pending grant: its referral (if any) becomes a billable ledger entry.
local function post_grant(pend, pendq, ledger, app, spec, seq)
  local s = cmsgpack.unpack(spec)
  if s[8] ~= '' then
    redis.call('XADD', ledger, '*', 'kind', 'post', 'app', app, 'entry', s[8], 'seq', seq)
  end
  redis.call('HDEL', pend, app)
  redis.call('ZREM', pendq, app)
end

-- Void the grants at this bucket whose deadline has passed (a few per call).
local function sweep(pend, pendq, ledger, now, limit)
  local due = redis.call('ZRANGEBYSCORE', pendq, '-inf', now, 'LIMIT', 0, limit)
  for _, app in ipairs(due) do
    local spec = redis.call('HGET', pend, app)
    if spec then
      void_grant(pend, pendq, ledger, app, spec, 'expired')
    else
      redis.call('ZREM', pendq, app)
    end
  end
  return #due
end
