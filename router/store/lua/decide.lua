-- One decision's whole walk in one call, at one server (grants.lua is prepended): the
-- application's record, then the candidates in the order the router gives (keep, branch,
-- the partners in routing order), each checked and the first that passes reserved, with
-- the decision record written in the same atomic step; when none passes, the decline
-- record. The order and the records are the router's (router/decide/allocate.py): this
-- script only tries them, so a refused first choice costs no second round trip and a
-- replay can send many decisions pipelined, in arrival order.
--
-- KEYS: 1 the application's record, 2 the event-time horizon (ZSET, member 'h'), then
--       per candidate: its counters (one per cap), dedupe key (a placeholder if unused),
--       ledger, pending grants
-- ARGV: 1 header, 6 doubles: event_ms, amount, record_ttl_ms, pending_ms (0: a grant is
--       posted at once), late_ms, the LATE_EVENT bit
--       2 fingerprint (8 bytes), 3 application id, 4 the decline record, 5 the bits of
--       refusals known to the router after the last candidate (a double)
--       then per candidate 4 arguments: its spec (doubles: caps n, dedupe_ms, use_dedupe,
--       the bit of a cap refusal, the bit of a dedupe refusal, the bits of refusals known
--       to the router before it; then per cap count_limit, amount_limit, counter_ttl_ms;
--       -1 = no limit), its decision record, the pending grant's member (pending_ms > 0;
--       see grants.lua) or the ledger entry JSON ('' for none), the ledger sequence of a
--       grant posted at once
-- Returns {-2, stored} when the application was decided before; else {g, r1, r2, ...}: g
-- the candidate that was granted (1-based; 0: none, the decline was stored) and r_i each
-- tried candidate's result as reserve.lua's (0 granted, 1 deduped, 2 + 2k (+1 when the
-- count is used up) for cap k, -3 late).
-- A record's reason bits (bytes 2-5, little-endian; reasons.py keeps them below 2^31)
-- get the refusals before it ORed in, as the router's walk does.

local MAX = 9007199254740991
local function bad(name, v) error('ROUTER bad ' .. name .. ': ' .. tostring(v)) end

if #ARGV < 5 or #KEYS < 2 then bad('arity', #KEYS .. ' keys, ' .. #ARGV .. ' args') end
if #ARGV[1] ~= 48 then bad('header', #ARGV[1] .. ' bytes') end
if #ARGV[5] ~= 8 then bad('after bits', #ARGV[5] .. ' bytes') end
local now, amount, ttl, pending_ms, late_ms, late_bit = struct.unpack('<dddddd', ARGV[1])
if not (now >= 0 and now <= MAX and now % 1 == 0) then bad('event_ms', now) end
if not (amount >= 1 and amount <= MAX and amount % 1 == 0) then bad('amount', amount) end
if not (ttl >= 1 and ttl <= MAX and ttl % 1 == 0) then bad('record_ttl_ms', ttl) end
if not (pending_ms >= 0 and pending_ms <= MAX and pending_ms % 1 == 0) then
  bad('pending_ms', pending_ms)
end
if not (late_ms >= 0 and late_ms <= MAX and late_ms % 1 == 0) then bad('late_ms', late_ms) end
local fp, app = ARGV[2], ARGV[3]
if #fp ~= 8 then bad('fingerprint', #fp) end
local after_bits = struct.unpack('<d', ARGV[5])

-- Where each candidate's keys start (its cap count is its spec's first number). The rest
-- of a spec is read and checked when that candidate is tried, before anything is written
-- for it: a candidate that is never tried writes nothing.
local m = (#ARGV - 5) / 4
if m ~= math.floor(m) then bad('arity', #ARGV) end
local koff, k = {}, 3
for c = 1, m do
  local spec = ARGV[5 + 4 * (c - 1) + 1]
  if #spec < 48 then bad('spec', #spec .. ' bytes') end
  local n = struct.unpack('<d', spec)
  if not (n >= 1 and n <= 64 and n % 1 == 0) then bad('caps', n) end
  if #spec ~= 48 + 24 * n then bad('spec', #spec) end
  koff[c] = k
  k = k + n + 3
end
if k - 1 ~= #KEYS then bad('keys', #KEYS) end

local function with_bits(record, bits)
  if bits == 0 then return record end
  local low = struct.unpack('<I4', record, 2)
  return string.sub(record, 1, 1) .. struct.pack('<I4', bit.bor(low, bits))
         .. string.sub(record, 6)
end

-- Decided before (a retry, or a concurrent caller that won): that decision is the answer.
local function decided(stored)
  if string.sub(stored, 1, 8) ~= fp then error('ROUTER conflict: same id, other content') end
  return {-2, stored}
end

-- One late-event rule, checked once: every candidate is refused as late.
local late = false
if redis.call('ZADD', KEYS[2], 'GT', 'CH', now, 'h') == 0 then
  local horizon = tonumber(redis.call('ZSCORE', KEYS[2], 'h'))
  late = now < horizon - late_ms
end
if late or m == 0 then
  local stored = redis.call('GET', KEYS[1])
  if stored then return decided(stored) end
end

local out, acc = {0}, 0
for c = 1, m do
  local a = 5 + 4 * (c - 1)
  local spec = ARGV[a + 1]
  local n, dedupe_ms, use_dedupe, cap_bit, dd_bit, pre = struct.unpack('<dddddd', spec)
  acc = bit.bor(acc, pre)
  local code = -3
  if not late then
    if not (dedupe_ms >= 0 and dedupe_ms <= MAX and dedupe_ms % 1 == 0) then
      bad('dedupe_ms', dedupe_ms)
    end
    local limits = {}
    for i = 1, n do
      local cl, al, cttl = struct.unpack('<ddd', spec, 49 + 24 * (i - 1))
      if not (cl >= -1 and cl <= MAX and cl % 1 == 0) then bad('count limit', cl) end
      if not (al >= -1 and al <= MAX and al % 1 == 0) then bad('amount limit', al) end
      if not (cttl >= 1 and cttl <= MAX and cttl % 1 == 0) then bad('counter ttl', cttl) end
      limits[i] = {cl, al, cttl}
    end
    if pending_ms > 0 and #ARGV[a + 3] < 10 then bad('member', #ARGV[a + 3]) end
    -- Counters and the dedupe mark in one MGET; the first candidate's also reads the
    -- application's record (one read and one write per key is the budget).
    local kk = koff[c]
    local reads = {}
    for i = 1, n + 1 do reads[i] = KEYS[kk + i - 1] end
    if c == 1 then reads[n + 2] = KEYS[1] end
    local v = redis.call('MGET', unpack(reads))
    if c == 1 and v[n + 2] then return decided(v[n + 2]) end
    use_dedupe = use_dedupe == 1
    local counts, amounts = {}, {}
    local function check()
      for i = 1, n do
        local cnt, amt = counter(v[i])
        counts[i], amounts[i] = cnt, amt
        local cl, al = limits[i][1], limits[i][2]
        if cl >= 0 and cnt + 1 > cl then return 2 + 2 * (i - 1) + 1 end
        if al >= 0 and amt + amount > al then return 2 + 2 * (i - 1) end
        if amt + amount > MAX then error('ROUTER amount overflow at cap ' .. i) end
      end
      if use_dedupe then
        local l = tonumber(v[n + 1])
        if l ~= nil and now - l < dedupe_ms then return 1 end
      end
      return 0
    end
    code = check()
    local pendq, ledger = KEYS[kk + n + 2], KEYS[kk + n + 1]
    -- Grants past their deadline may hold the room or the dedupe mark (see reserve.lua).
    if code ~= 0 and redis.call('ZCARD', pendq) > 0 and sweep(pendq, ledger, server_ms(), 8) > 0 then
      v = redis.call('MGET', unpack(reads, 1, n + 1))
      code = check()
    end
    if code == 0 then
      for i = 1, n do
        local value = string.format('%d %d', counts[i] + 1, amounts[i] + amount)
        if v[i] then
          redis.call('SET', KEYS[kk + i - 1], value, 'KEEPTTL')
        else
          redis.call('SET', KEYS[kk + i - 1], value, 'PX', limits[i][3])
        end
      end
      if use_dedupe then
        redis.call('SET', KEYS[kk + n], now, 'PX', dedupe_ms + late_ms)
      end
      local payload = ARGV[a + 3]
      if pending_ms > 0 then
        redis.call('ZADD', pendq, server_ms() + pending_ms, payload)
      elseif payload ~= '' then
        redis.call('XADD', ledger, '*', 'kind', 'post', 'app', app, 'entry', payload,
                   'seq', ARGV[a + 4])
      end
      redis.call('SET', KEYS[1], fp .. with_bits(ARGV[a + 2], acc), 'PX', ttl)
      out[1] = c
      out[#out + 1] = 0
      return out
    end
  end
  out[#out + 1] = code
  if code == -3 then
    acc = bit.bor(acc, late_bit)
  elseif code == 1 then
    acc = bit.bor(acc, dd_bit)
  else
    acc = bit.bor(acc, cap_bit)
  end
end
redis.call('SET', KEYS[1], fp .. with_bits(ARGV[4], bit.bor(acc, after_bits)), 'PX', ttl)
return out
