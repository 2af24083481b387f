-- Settle grants at one bucket (grants.lua is prepended): post or void pending grants, or
-- sweep the ones past their deadline.
--
-- KEYS: 1 <b>:pend, 2 <b>:pendq, 3 <b>:ledger
-- ARGV: 1 'post' | 'void' | 'sweep'
--       post/void: then (application id, token, seq) triples; token '' matches any
--       (a retry answering a decision it found, not one it made); seq is used by post
--       sweep: 2 the most grants to void in this call
-- Returns, per triple: 1 settled now, 0 nothing pending (already settled or expired),
-- -1 pending under another caller's token (left alone); for sweep, how many were voided.
-- Posting and voiding are idempotent, so a settle whose reply was lost can be re-sent.

local op = ARGV[1]
local pend, pendq, ledger = KEYS[1], KEYS[2], KEYS[3]
local now = server_ms()
if op == 'sweep' then
  return sweep(pend, pendq, ledger, now, tonumber(ARGV[2]) or 100)
end
if op ~= 'post' and op ~= 'void' then error('ROUTER bad settle op: ' .. tostring(op)) end
if (#ARGV - 1) % 3 ~= 0 then error('ROUTER bad settle arity: ' .. #ARGV) end
local out = {}
for i = 2, #ARGV, 3 do
  local app, token, seq = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local spec = redis.call('HGET', pend, app)
  if not spec then
    out[#out + 1] = 0
  elseif token ~= '' and cmsgpack.unpack(spec)[1] ~= token then
    out[#out + 1] = -1
  elseif op == 'post' then
    post_grant(pend, pendq, ledger, app, spec, seq)
    out[#out + 1] = 1
  else
    void_grant(pend, pendq, ledger, app, spec, 'caller')
    out[#out + 1] = 1
  end
end
-- Grants whose callers vanished are voided here too, not only by reservations.
sweep(pend, pendq, ledger, now, 16)
return out
