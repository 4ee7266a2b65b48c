-- begin_run: the guard before every run. One round trip decides whether a run of one service
-- may start now and, if it may, starts it: takes a lease and hands out a fencing token.
-- On the way it records runs whose worker died (their lease lapsed with no finish) as `lost`,
-- and notices a store that lost its data (the epoch this process knew is gone).
-- include: history
-- include: counters
--
-- KEYS[1]  state hash     <prefix>:<name>
-- KEYS[2]  lease zset     <prefix>:<name>:lease     member = run token, score = expiry (ms)
-- KEYS[3]  history list   <prefix>:<name>:history   (newest first)
-- KEYS[4]  inflight hash  <prefix>:<name>:inflight  run token -> start (ms)
-- KEYS[5]  audit list     <prefix>:<name>:audit     (not written here)
-- KEYS[6]  epoch hash     <prefix>:_epoch           id, created_at [, lost_at, lost_epoch]
-- ARGV[1]  token          the run's token (run id @ worker); becomes the lease member
-- ARGV[2]  lease_ms       how long the lease lasts unless renewed
-- ARGV[3]  max_runs       max_concurrent_runs: how many leases may be held at once
-- ARGV[4]  kind           tick | catchup | loop | retry | trigger (catchup: a missed slot)
-- ARGV[5]  tick_gap_ms    a tick or loop run sooner than this after the last one is a duplicate
-- ARGV[6]  known_epoch    the epoch id this process last saw ('' if none)
-- ARGV[7]  new_epoch      the id to give the store if it has no epoch
-- ARGV[8]  cooldown_ms    stop_cooldown_seconds in ms: a probe run after a max_failures stop
-- ARGV[9]  max_ahead_ms   a stored time further ahead than this is absurd: ignored, with a warning
-- ARGV[10] history_len    how many runs the history keeps
-- ARGV[11] remembered     'paused' | 'stopped' | '': this service as this process last saw it
--                         (after a loss, a remembered pause or stop is merged in: it wins)
-- ARGV[12] slot_ms        a Beat tick's due time ('' for none): each slot runs at most once
--                         and in order. A catchup tick (a replayed missed slot) passes on its
--                         slot alone and does not move last_tick_at. A regular tick on time
--                         (at most a slack after its slot) always runs; a late one (queued
--                         while workers were down or busy) only if the last regular tick ran
--                         at least period - slack ago. The period is the smaller of the tick's
--                         own (to ARGV[13]) and the one since the last slot, slack = min(period
--                         / 4, 1 s): all from the effective schedule, none from ARGV[5]
-- ARGV[13] next_slot_ms   the slot after a regular tick's ('' for none)
-- ARGV[14] slack_fraction services.schedule.TICK_SLACK_FRACTION (0.25)
-- ARGV[15] max_slack_ms   services.schedule.MAX_TICK_SLACK_SECONDS in ms (1000)
-- ARGV[16] slot_ahead_ms  services.schedule.SLOT_AHEAD_SECONDS in ms: a slot further ahead of
--                         Redis's clock is a clock step or a hand edit, ignored with a warning
-- ARGV[17] history_bytes  how many bytes of entries the history keeps (the newest always)
--
-- Returns {verdict, detail, now_ms, warnings, epoch, kind}
--   go               detail = run sequence number (fencing token); kind = the run's kind
--                    (`probe` for a probe run after stop_cooldown_seconds)
--   stopped          detail = stop_reason
--   paused           detail = ''
--   held             detail = lost_at (ms): Redis lost its data and nobody has restored or
--                    confirmed this service's state since; nothing runs until then
--   backoff          detail = retry_at (epoch seconds) after a failure
--   duplicate        detail = last_tick_at (ms): another tick already ran in this window, or
--                    last_slot (ms): this tick's slot, or a later one, already ran
--   nothing_to_retry detail = '': a retry whose failure a later success already cleared
--   leased           detail = comma-separated tokens holding every lease
--   corrupt          detail = 'field=value': a flag Redis holds is not a flag; nothing runs
--   warnings: 'field=value' for fields that were unreadable or absurd and treated as unset

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
local known_epoch, cooldown_ms, max_ahead = ARGV[6], tonumber(ARGV[8]), tonumber(ARGV[9])

-- The lease's members and their expiries, read once: by the lost-run check below when runs
-- are in flight, else only once the guard lets the run through.
local lease_expiry, lease_members
local function read_lease()
  lease_expiry, lease_members = {}, {}
  local flat = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #flat, 2 do
    lease_expiry[flat[i]] = tonumber(flat[i + 1])
    table.insert(lease_members, flat[i])
  end
end

-- Runs whose lease lapsed without a finish: their worker died (SIGKILL, OOM, power). Each is
-- recorded once, as `lost`, by whichever guard finds it first.
local in_flight = redis.call('HKEYS', KEYS[4])
if #in_flight > 0 then read_lease() end
for _, held in ipairs(in_flight) do
  local expiry = lease_expiry[held]
  if not expiry or expiry < now then
    local started = tonumber(redis.call('HGET', KEYS[4], held)) or now
    local ended = expiry or now
    redis.call('HDEL', KEYS[4], held)
    redis.call('HSET', KEYS[1], 'runs_lost',
      count_plus(redis.call('HGET', KEYS[1], 'runs_lost'), 1))
    push_history_counted(KEYS[1], KEYS[3], cjson.encode({
      run_id = string.match(held, '^[^@]*'), token = held,
      worker = string.match(held, '@(.*)$') or cjson.null, outcome = 'lost',
      started_at = started / 1000, finished_at = ended / 1000,
      duration = (ended - started) / 1000, lease_lost = true, superseded = false,
      error = string.format('the worker died mid-run: its lease lapsed at %.3f without a finish',
        ended / 1000)}), tonumber(ARGV[10]), tonumber(ARGV[17]), 0)
  end
end

-- The store's epoch. None while this process remembers one: Redis lost its data (a restart
-- without persistence, FLUSHDB, failover to an empty replica). None and nothing remembered:
-- a new store.
local e = redis.call('HMGET', KEYS[6], 'id', 'lost_at', 'lost_epoch')
local epoch, lost_at = e[1], e[2]
if not epoch then
  epoch = ARGV[7]
  redis.call('HSET', KEYS[6], 'id', epoch, 'created_at', now)
end
-- The epoch this process knew is gone, whether the key is missing or something that knew
-- no epoch (a new worker, a standalone loop) made a fresh one first: a loss either way.
if known_epoch ~= '' and known_epoch ~= epoch and known_epoch ~= e[3] then
  lost_at = tostring(now)
  redis.call('HSET', KEYS[6], 'lost_at', lost_at, 'lost_epoch', known_epoch,
    'detected_by', string.match(token, '@(.*)$') or token)
end

local h = redis.call('HMGET', KEYS[1], 'running', 'paused', 'retry_at', 'last_tick_at',
  'failures', 'runs', 'stop_reason', 'stopped_by', 'stopped_at', 'epoch', 'change', 'last_slot')
-- After a loss, a service runs only once its state was restored (by a worker that saw it)
-- or an operator acted on it: the safe reading is "may have been paused or stopped".
if lost_at and h[10] ~= epoch and not h[11] then
  return {'held', lost_at, now, warnings, epoch, kind}
end
if lost_at and not h[11] and ((ARGV[11] == 'paused' and h[2] ~= '1')
    or (ARGV[11] == 'stopped' and h[1] ~= '0')) then
  -- Another worker restored this service from an older memory; this process saw it paused or
  -- stopped since, and the safe reading wins.
  if ARGV[11] == 'paused' then
    redis.call('HSET', KEYS[1], 'paused', 1)
    h[2] = '1'
  else
    h[7] = 'stopped before Redis lost its data (restored)'
    redis.call('HSET', KEYS[1], 'running', 0, 'stopped_by', 'restored', 'stop_reason', h[7])
    h[1] = '0'
  end
  redis.call('LPUSH', KEYS[5], cjson.encode({action = 'restore', by = string.match(token, '@(.*)$'),
    at = now / 1000, reason = 'Redis lost its data; this worker saw it ' .. ARGV[11]}))
end
local running, paused = flag(h[1], true), flag(h[2], false)
if running == nil then return {'corrupt', 'running=' .. h[1], now, warnings, epoch, kind} end
if paused == nil then return {'corrupt', 'paused=' .. h[2], now, warnings, epoch, kind} end
local probe = false
if not running then
  local stopped_at = number('stopped_at', h[9])
  probe = cooldown_ms > 0 and not paused and h[8] == 'max_failures' and stopped_at ~= nil
    and now >= stopped_at * 1000 + cooldown_ms
  if not probe then return {'stopped', h[7] or '', now, warnings, epoch, kind} end
  kind = 'probe'
end
if paused then return {'paused', '', now, warnings, epoch, kind} end

local retry_at = number('retry_at', h[3])
if retry_at and retry_at * 1000 - now > max_ahead then
  table.insert(warnings, 'retry_at=' .. h[3])  -- a typo or a hand edit, not a backoff
  retry_at = nil
end
if not probe and retry_at and now < retry_at * 1000 then
  return {'backoff', h[3], now, warnings, epoch, kind}
end
local last_tick = number('last_tick_at', h[4])
if last_tick and last_tick > now + tick_gap then
  -- A tick from the future (a hand-edited value, a clock that jumped back) would make every
  -- tick a duplicate for ever: treat it as unset, and say so.
  table.insert(warnings, 'last_tick_at=' .. h[4])
  last_tick = nil
end
-- Beat sends a slot once it is due, so no slot is ever ahead of Redis's clock by more than a
-- clock step: one further ahead (a clock that jumped back, a hand edit) would refuse every
-- tick until then, so it is ignored (stored) or refused to be stored (incoming), with a warning.
local SLOT_AHEAD_MS = tonumber(ARGV[16])
local slot = tonumber(ARGV[12])
if slot and slot > now + SLOT_AHEAD_MS then
  table.insert(warnings, 'slot=' .. ARGV[12])
  slot = nil
end
local last_slot = number('last_slot', h[12])
if last_slot and last_slot > now + SLOT_AHEAD_MS then
  table.insert(warnings, 'last_slot=' .. h[12])
  last_slot = nil
end
local ticking = kind == 'tick' or kind == 'catchup'
if ticking and slot and last_slot and slot <= last_slot then
  return {'duplicate', h[12], now, warnings, epoch, kind}
end
if kind == 'tick' and slot then
  local next_slot = tonumber(ARGV[13])
  local period = next_slot and next_slot > slot and next_slot - slot or nil
  if last_slot then period = math.min(period or math.huge, slot - last_slot) end
  if period then
    local slack = math.min(period * tonumber(ARGV[14]), tonumber(ARGV[15]))
    if now - slot > slack and last_tick and now - last_tick < period - slack then
      return {'duplicate', h[4], now, warnings, epoch, kind}
    end
  end
elseif (kind == 'tick' or kind == 'loop') and last_tick and now - last_tick < tick_gap then
  return {'duplicate', h[4], now, warnings, epoch, kind}
end
local failures = number('failures', h[5]) or 0
if kind == 'retry' and failures == 0 then
  return {'nothing_to_retry', '', now, warnings, epoch, kind}
end

-- The lease's live members; lapsed ones (expiry <= now) are removed.
if not lease_members then read_lease() end
local holders, lapsed = {}, false
for _, member in ipairs(lease_members) do
  if lease_expiry[member] > now then table.insert(holders, member) else lapsed = true end
end
if lapsed then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
if #holders >= max_runs then
  return {'leased', table.concat(holders, ','), now, warnings, epoch, kind}
end
redis.call('ZADD', KEYS[2], now + lease_ms, token)
-- Every member expires within lease_ms of its last write, so this TTL outlives them all and
-- a crashed worker's lease disappears by itself; the inflight entry stays until it is found.
redis.call('PEXPIRE', KEYS[2], lease_ms)
redis.call('HSET', KEYS[4], token, now)

local seq = (number('runs', h[6]) or 0) + 1
local started = string.format('%.3f', now / 1000)
-- One write of the state hash per run.
local writes = {'runs', seq, 'last_started_at', started, 'last_run_id', token}
if ticking and slot then table.insert(writes, 'last_slot') table.insert(writes, slot) end
if kind == 'tick' or kind == 'loop' then
  table.insert(writes, 'last_tick_at')
  table.insert(writes, now)
elseif probe then
  -- One probe per cooldown, however many ticks arrive at once.
  table.insert(writes, 'stopped_at')
  table.insert(writes, started)
end
redis.call('HSET', KEYS[1], unpack(writes))
return {'go', tostring(seq), now, warnings, epoch, kind}
