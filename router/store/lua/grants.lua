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
--   <b>:pend   HASH  <app> -> token (8 bytes) .. spec (msgpack), what voiding needs to undo;
--                    <app>:e -> the ledger entry (referrals), <app>:p -> the applicant's
--                    previous dedupe mark (when the grant overwrote one)
--   <b>:pendq  ZSET  application id -> deadline (server ms); past it the grant is voided
--                    by the next refused reservation or settle call at this bucket (a
--                    client that died between send and reply never posts)
--   <b>:ledger STREAM kind=post (a billable referral: app, entry, seq) or kind=void (app,
--                    why); ``seq`` is the order the router handed decisions back in
-- spec = {amount, event_ms, {counter keys}, dedupe key or '', dedupe_ms, application
--         record key or '', grant key or ''} (packed by the client)

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function forget(pend, pendq, app)
  redis.call('HDEL', pend, app, app .. ':e', app .. ':p')
  redis.call('ZREM', pendq, app)
end

-- Undo a pending grant: release its counters and dedupe mark, drop the application's
-- record and grant key (a retry then decides afresh), and note the void on the ledger.
local function void_grant(pend, pendq, ledger, app, spec, why)
  local s = cmsgpack.unpack(string.sub(spec, 9))
  local amount = s[1]
  for _, c in ipairs(s[3]) do
    -- A counter that expired (garbage collection only) has nothing left to release.
    if redis.call('EXISTS', c) == 1 then
      redis.call('HINCRBY', c, 'n', -1)
      redis.call('HINCRBY', c, 'a', -amount)
    end
  end
  local dk = s[4]
  if dk ~= '' and tonumber(redis.call('GET', dk)) == s[2] then
    local prev = redis.call('HGET', pend, app .. ':p')
    if prev then
      redis.call('SET', dk, prev, 'PX', s[5])
    else
      redis.call('DEL', dk)
    end
  end
  if s[6] ~= '' then redis.call('DEL', s[6]) end
  if s[7] ~= '' then redis.call('DEL', s[7]) end
  if redis.call('HEXISTS', pend, app .. ':e') == 1 then
    redis.call('XADD', ledger, '*', 'kind', 'void', 'app', app, 'why', why)
  end
  forget(pend, pendq, app)
end

-- Post a pending grant: its referral (if any) becomes a billable ledger entry.
local function post_grant(pend, pendq, ledger, app, seq)
  local entry = redis.call('HGET', pend, app .. ':e')
  if entry then
    redis.call('XADD', ledger, '*', 'kind', 'post', 'app', app, 'entry', entry, 'seq', seq)
  end
  forget(pend, pendq, app)
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
