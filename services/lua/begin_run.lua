-- begin_run: the guard before every run. One round trip decides whether a run of one service
-- may start now and, if it may, starts it: takes a lease and hands out a fencing token.
--
-- KEYS[1]  state hash   <prefix>:<name>
-- KEYS[2]  lease zset   <prefix>:<name>:lease   member = run token, score = expiry (ms)
-- ARGV[1]  token        the run's token (run id @ worker); becomes the lease member
-- ARGV[2]  lease_ms     how long the lease lasts unless renewed
-- ARGV[3]  max_runs     max_concurrent_runs: how many leases may be held at once
-- ARGV[4]  kind         tick | loop | retry | trigger
-- ARGV[5]  tick_gap_ms  a tick or loop run sooner than this after the last one is a duplicate
--
-- Returns {verdict, detail, now_ms, warnings}
--   go               detail = run sequence number (fencing token, increases per run)
--   stopped          detail = stop_reason
--   paused           detail = ''
--   backoff          detail = retry_at (epoch seconds) after a failure
--   duplicate        detail = last_tick_at (ms): another tick already ran in this window
--   nothing_to_retry detail = '': a retry whose failure a later success already cleared
--   leased           detail = comma-separated tokens holding every lease
--   corrupt          detail = 'field=value': a flag Redis holds is not a flag; nothing runs
--   warnings: 'field=value' for numeric fields that were unreadable and treated as unset

local TRUE = {['1'] = true, ['true'] = true, ['yes'] = true, ['on'] = true}
local FALSE = {['0'] = true, ['false'] = true, ['no'] = true, ['off'] = true, [''] = true}
local warnings = {}

local function flag(value, default)
  if not value then return default end
  local s = string.lower(value)
  if TRUE[s] then return true end
  if FALSE[s] then return false end
  return nil
end

local function number(field, value)
  if not value or value == '' then return nil end
  local n = tonumber(value)
  -- tonumber() accepts 'nan', 'inf' and hex ('0x10'), which no count or time here is
  if n == nil or n ~= n or n == math.huge or n == -math.huge or string.find(value, '[xX]') then
    table.insert(warnings, field .. '=' .. value)
    return nil
  end
  return n
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token, lease_ms, max_runs = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local kind, tick_gap = ARGV[4], tonumber(ARGV[5])

local h = redis.call('HMGET', KEYS[1], 'running', 'paused', 'retry_at', 'last_tick_at',
  'failures', 'runs', 'stop_reason')
local running, paused = flag(h[1], true), flag(h[2], false)
if running == nil then return {'corrupt', 'running=' .. h[1], now, warnings} end
if paused == nil then return {'corrupt', 'paused=' .. h[2], now, warnings} end
if not running then return {'stopped', h[7] or '', now, warnings} end
if paused then return {'paused', '', now, warnings} end

local retry_at = number('retry_at', h[3])
if retry_at and now < retry_at * 1000 then
  return {'backoff', h[3], now, warnings}
end
local last_tick = number('last_tick_at', h[4])
if last_tick and last_tick > now + tick_gap then
  -- A tick from the future (a hand-edited value, a clock that jumped back) would make every
  -- tick a duplicate for ever: treat it as unset, and say so.
  table.insert(warnings, 'last_tick_at=' .. h[4])
  last_tick = nil
end
if (kind == 'tick' or kind == 'loop') and last_tick and now - last_tick < tick_gap then
  return {'duplicate', h[4], now, warnings}
end
local failures = number('failures', h[5]) or 0
if kind == 'retry' and failures == 0 then
  return {'nothing_to_retry', '', now, warnings}
end

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local holders = redis.call('ZRANGE', KEYS[2], 0, -1)
if #holders >= max_runs then
  return {'leased', table.concat(holders, ','), now, warnings}
end
redis.call('ZADD', KEYS[2], now + lease_ms, token)
-- Every member expires within lease_ms of its last write, so this TTL outlives them all and
-- a crashed worker's lease disappears by itself.
redis.call('PEXPIRE', KEYS[2], lease_ms)

local seq = (number('runs', h[6]) or 0) + 1
local started = string.format('%.3f', now / 1000)
if kind == 'tick' or kind == 'loop' then
  redis.call('HSET', KEYS[1], 'runs', seq, 'last_started_at', started, 'last_run_id', token,
    'last_tick_at', now)
else
  redis.call('HSET', KEYS[1], 'runs', seq, 'last_started_at', started, 'last_run_id', token)
end
return {'go', tostring(seq), now, warnings}
