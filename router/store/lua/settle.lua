-- Settle grants (grants.lua is prepended): post or void pending grants, or sweep the ones
-- past their deadline, at one or more buckets.
--
-- KEYS: per bucket three keys: <b>:pend, <b>:pendq, <b>:ledger (bucket i at 3i-2 .. 3i)
-- ARGV: 1 'settle' | 'sweep'
--       settle: then (op 'post' | 'void', bucket number, application id, token, seq)
--       quintuples, applied in order; token '' matches any (a retry answering a decision it
--       found, not one it made); seq is the ledger sequence of a post
--       sweep: 2 the most grants to void per bucket
-- Returns, per quintuple: 1 settled now, 0 nothing pending (already settled or expired),
-- -1 pending under another caller's token (left alone); for sweep, how many were voided.
-- Posting and voiding are idempotent, so a settle whose reply was lost can be re-sent.
-- On a cluster every call names buckets of one hash slot only.

local mode = ARGV[1]
if #KEYS == 0 or #KEYS % 3 ~= 0 then error('ROUTER bad settle keys: ' .. #KEYS) end
local now = server_ms()
local function bucket(i)
  i = tonumber(i)
  if i == nil or i < 1 or 3 * i > #KEYS then error('ROUTER bad settle bucket: ' .. tostring(i)) end
  return KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
end
if mode == 'sweep' then
  local total = 0
  for i = 1, #KEYS / 3 do
    local pend, pendq, ledger = bucket(i)
    total = total + sweep(pend, pendq, ledger, now, tonumber(ARGV[2]) or 100)
  end
  return total
end
if mode ~= 'settle' then error('ROUTER bad settle mode: ' .. tostring(mode)) end
if (#ARGV - 1) % 5 ~= 0 then error('ROUTER bad settle arity: ' .. #ARGV) end
local out = {}
for i = 2, #ARGV, 5 do
  local op, app, token, seq = ARGV[i], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local pend, pendq, ledger = bucket(ARGV[i + 1])
  if op ~= 'post' and op ~= 'void' then error('ROUTER bad settle op: ' .. tostring(op)) end
  local spec = redis.call('HGET', pend, app)
  if not spec then
    out[#out + 1] = 0
  elseif token ~= '' and string.sub(spec, 1, 8) ~= token then
    out[#out + 1] = -1
  elseif op == 'post' then
    post_grant(pend, pendq, ledger, app, seq)
    out[#out + 1] = 1
  else
    void_grant(pend, pendq, ledger, app, spec, 'caller')
    out[#out + 1] = 1
  end
end
-- Grants whose callers vanished are voided here too, not only by reservations.
for i = 1, #KEYS / 3 do
  local pend, pendq, ledger = bucket(i)
  sweep(pend, pendq, ledger, now, 4)
end
return out
