-- finish_run: record one run's outcome, release its lease and append it to the history.
-- include: history
-- include: counters
-- One round trip after every run that begin_run let start.
--
-- KEYS[1]  state hash     <prefix>:<name>
-- KEYS[2]  lease zset     <prefix>:<name>:lease
-- KEYS[3]  history list   <prefix>:<name>:history (newest first)
-- KEYS[4]  inflight hash  <prefix>:<name>:inflight
-- KEYS[5]  audit list     <prefix>:<name>:audit (a probe run that starts the service again)
-- KEYS[6]  epoch hash     <prefix>:_epoch (not read here; the keys are begin_run's)
-- ARGV[1]  token          the run's token, as given to begin_run
-- ARGV[2]  seq            the run's sequence number, as begin_run returned it
-- ARGV[3]  outcome        ok | error | timeout | interrupted (the worker's own shutdown)
-- ARGV[4]  error          the error text ('' on ok)
-- ARGV[5]  max_failures   counted failures that stop the service...
-- ARGV[6]  retry_ms       ...once they span max_failures x retry_ms (retry_delay_seconds)
-- ARGV[7]  history_len    how many runs the history keeps
-- ARGV[8]  started_ms     the run's start, as begin_run returned it
-- ARGV[9]  worker         host:pid of the process that ran it
-- ARGV[10] kind           the run's kind, as begin_run returned it (probe: see below)
-- ARGV[11] audit_len      how many entries the audit list keeps
-- ARGV[12] history_bytes  how many bytes of entries the history keeps (the newest always)
--
-- Returns {failures, stopped, superseded, lease_lost, retry_at_ms, counted}
--   A failure (error, timeout) is counted once per backoff window: a failing run that began
--   before the last counted failure overlapped it (concurrent runs, their retries) and only
--   joins the history. The service stops at max_failures counted failures, and only once
--   they span max_failures x retry_delay: an outage shorter than that never stops it.
--   superseded = 1: the lease was lost and a newer run has started since; only the history
--   records it, never over the newer run's state.
--   A probe run (after stop_cooldown_seconds) that succeeds starts the service again, in the
--   audit list; one that fails leaves it stopped until the next cooldown.
--   seq = 0 records an outcome that belongs to no leased run (AbstractService._handle_failure
--   called outside a run): it is never superseded, always counted, and stops the service at
--   max_failures as the seed's counter did.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token, seq, outcome, err = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local max_failures, retry_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local history_len, started, worker = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local kind = ARGV[10]

local expiry = redis.call('ZSCORE', KEYS[2], token)
local lease_lost = (not expiry) or tonumber(expiry) < now
redis.call('ZREM', KEYS[2], token)
if seq > 0 and redis.call('HDEL', KEYS[4], token) == 0 and lease_lost then
  -- A guard recorded this run as lost when its lease lapsed, yet it was alive (its renewals
  -- starved, or an operator removed the lease): a run ends in exactly one outcome, so its
  -- real one replaces the `lost` entry. (The runs_lost counter stays: counters only grow.)
  for _, row in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    local ok, old = pcall(cjson.decode, row)
    if ok and type(old) == 'table' and old.token == token and old.outcome == 'lost' then
      redis.call('LREM', KEYS[3], 1, row)
      break
    end
  end
end

-- Metrics (worker/metrics.py reads them): every run this script records is counted once, by
-- outcome, and its duration lands in one histogram bucket (the collector sums the buckets
-- into Prometheus' cumulative ones). The bounds (ms) must equal DURATION_BUCKETS_MS there.
local duration_ms = now - started
local bucket = 'inf'
for _, bound in ipairs({10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 900000, 3600000}) do
  if duration_ms <= bound then bucket = tostring(bound) break end
end
local runs_field, bucket_field = 'runs_' .. outcome, 'duration_le_' .. bucket

-- The state hash is read once and written once (plus one HDEL when fields go, and the
-- history's own counts after the push).
local h = redis.call('HMGET', KEYS[1], 'runs', 'failures', 'failure_window_at',
  'first_failure_at', 'retry_at', 'stopped_by', runs_field, bucket_field, 'duration_ms_sum',
  'history_bytes', 'history_count')
local superseded = lease_lost and seq > 0 and count(h[1]) > seq
if seq == 0 then lease_lost = false end
local finished = string.format('%.3f', now / 1000)
local writes, gone = {}, {}
local function set(field, value)
  table.insert(writes, field)
  table.insert(writes, value)
end

local failures, stopped, retry_at, counted = count(h[2]), 0, 0, 0
if not superseded then
  if outcome == 'ok' then
    set('failures', 0)
    set('last_finished_at', finished)
    set('last_success_at', finished)
    if h[3] or h[4] or h[5] then gone = {'retry_at', 'failure_window_at', 'first_failure_at'} end
    failures = 0
    -- Only a stop by max_failures: an operator who stopped it during the probe decides.
    if kind == 'probe' and h[6] == 'max_failures' then
      set('running', 1)
      for _, field in ipairs({'stop_reason', 'stopped_by', 'stopped_at'}) do
        table.insert(gone, field)
      end
      redis.call('LPUSH', KEYS[5], cjson.encode({action = 'start', by = 'probe@' .. worker,
        reason = 'a probe run after stop_cooldown_seconds succeeded', at = now / 1000}))
      redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[11]) - 1)
    end
  elseif outcome == 'interrupted' then
    set('last_finished_at', finished)
  else
    set('last_finished_at', finished)
    set('last_error', err)
    set('last_error_at', finished)
    local window_at = count(h[3])
    -- A manual outcome (seq 0, _handle_failure outside any run) counts as the seed's did.
    if seq == 0 or (kind ~= 'probe' and (window_at == 0 or started > window_at)) then
      counted = 1
      failures = failures + 1
      local first = now
      if failures > 1 and count(h[4]) > 0 then first = count(h[4]) end
      set('failures', failures)
      set('failure_window_at', now)
      set('first_failure_at', first)
      if failures >= max_failures and (seq == 0 or now - first >= max_failures * retry_ms) then
        stopped = 1
        set('running', 0)
        set('stopped_by', 'max_failures')
        set('stopped_at', finished)
        set('stop_reason', string.format(
          'failed %d times in a row (max_failures=%d); last error: %s',
          failures, max_failures, err))
        gone = {'retry_at'}
      else
        retry_at = now + retry_ms
        set('retry_at', string.format('%.3f', retry_at / 1000))
      end
    end
  end
end

set(runs_field, count_plus(h[7], 1))
set(bucket_field, count_plus(h[8], 1))
set('duration_ms_sum', count_plus(h[9], duration_ms))
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
redis.call('HSET', KEYS[1], unpack(writes))

local entry = {
  run_id = string.match(token, '^[^@]*'), token = token, seq = seq, worker = worker,
  outcome = outcome, kind = kind, counted = counted == 1,
  started_at = started / 1000, finished_at = now / 1000, duration = (now - started) / 1000,
  error = (err ~= '' and err) or cjson.null, lease_lost = lease_lost, superseded = superseded,
}
-- The history last: the outcome above stands even if the history key is not a list.
local size, len = push_history(KEYS[3], cjson.encode(entry), history_len, tonumber(ARGV[12]),
  seq, h[10], h[11])
redis.call('HSET', KEYS[1], 'history_bytes', size, 'history_count', len)
return {failures, stopped, superseded and 1 or 0, lease_lost and 1 or 0, retry_at, counted}
