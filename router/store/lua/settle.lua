-- Settle grants (grants.lua is prepended): post or void pending grants, or sweep the ones
-- past their deadline, at one or more buckets.
--
-- KEYS: per bucket two keys: <b>:pendq, <b>:ledger (bucket i at 2i-1, 2i)
-- ARGV: 1 'settle' | 'sweep'
--       settle: then (op 'post' | 'void', bucket number, application id, member, seq)
--       quintuples, applied in order. A post with an empty member posts whatever grant of
--       that application is pending there (a retry answering a decision it found, not one
--       it made)
--       sweep: 2 the most grants to void per bucket
-- Returns, per quintuple: 1 settled now; for a post of a member no longer pending, 0 when
-- it was voided (at its deadline: its caller was answered, the ledger will not bill it)
-- and 2 when it was not (posted by an earlier send whose reply was lost); otherwise 0
-- (not pending: settled before, or never granted); for sweep, how many were voided. Posting and voiding are
-- idempotent, so a settle whose reply was lost can be re-sent.
-- On a cluster every call names buckets of one hash slot only.

local mode = ARGV[1]
if #KEYS == 0 or #KEYS % 2 ~= 0 then error('ROUTER bad settle keys: ' .. #KEYS) end
local now = server_ms()
local function bucket(i)
  i = tonumber(i)
  if i == nil or i < 1 or 2 * i > #KEYS then error('ROUTER bad settle bucket: ' .. tostring(i)) end
  return KEYS[2 * i - 1], KEYS[2 * i]
end
if mode == 'sweep' then
  local total = 0
  for i = 1, #KEYS / 2 do
    local pendq, ledger = bucket(i)
    total = total + sweep(pendq, ledger, now, tonumber(ARGV[2]) or 100)
  end
  return total
end
if mode ~= 'settle' then error('ROUTER bad settle mode: ' .. tostring(mode)) end
if (#ARGV - 1) % 5 ~= 0 then error('ROUTER bad settle arity: ' .. #ARGV) end
local out = {}
for i = 2, #ARGV, 5 do
  local op, app, member, seq = ARGV[i], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local pendq, ledger = bucket(ARGV[i + 1])
  if op ~= 'post' and op ~= 'void' then error('ROUTER bad settle op: ' .. tostring(op)) end
  if member == '' and op == 'post' then
    -- Rare (a retry): find this application's pending grant, if any.
    local cursor = '0'
    repeat
      local r = redis.call('ZSCAN', pendq, cursor, 'MATCH', app .. '\0*', 'COUNT', 1000)
      cursor = r[1]
      if r[2][1] then member = r[2][1]; cursor = '0' end
    until cursor == '0'
  end
  if member ~= '' and redis.call('ZREM', pendq, member) == 1 then
    if op == 'post' then
      local _, entry = parts(member)
      if entry ~= '' then
        redis.call('XADD', ledger, '*', 'kind', 'post', 'app', app, 'entry', entry, 'seq', seq)
      end
    else
      void_member(ledger, member, 'caller')
    end
    out[#out + 1] = 1
  elseif op == 'post' and member ~= '' and redis.call('EXISTS', void_mark(ledger, member)) == 0 then
    out[#out + 1] = 2
  else
    out[#out + 1] = 0
  end
end
-- Grants whose callers vanished are voided here too, not only by reservations.
for i = 1, #KEYS / 2 do
  local pendq, ledger = bucket(i)
  sweep(pendq, ledger, now, 4)
end
return out
