-- finish_run: record one run's outcome, release its lease and append it to the history.
-- One round trip after every run that begin_run let start.
--
-- KEYS[1]  state hash    <prefix>:<name>
-- KEYS[2]  lease zset    <prefix>:<name>:lease
-- KEYS[3]  history list  <prefix>:<name>:history (newest first)
-- ARGV[1]  token         the run's token, as given to begin_run
-- ARGV[2]  seq           the run's sequence number, as begin_run returned it
-- ARGV[3]  outcome       ok | error | interrupted (shutdown mid-run: not a failure)
-- ARGV[4]  error         the error text ('' on ok)
-- ARGV[5]  max_failures  consecutive failures that stop the service
-- ARGV[6]  retry_ms      retry_delay_seconds in ms: how long a failure backs off
-- ARGV[7]  history_len   how many runs the history keeps
-- ARGV[8]  started_ms    the run's start, as begin_run returned it
-- ARGV[9]  worker        host:pid of the process that ran it
--
-- Returns {failures, stopped, superseded, lease_lost, retry_at_ms}
--   superseded = 1: the lease was lost and a newer run has started since; only the history
--   records this run, so that a late finish never overwrites the newer run's state.
--   seq = 0 records an outcome that belongs to no leased run (AbstractService._handle_failure
--   called outside a run): it is never superseded.

-- A count as Redis holds it; unreadable, 'nan', 'inf' or hex (which tonumber() accepts) is 0.
local function count(value)
  local n = tonumber(value or '0')
  if n == nil or n ~= n or n == math.huge or n == -math.huge or string.find(value or '', '[xX]') then
    return 0
  end
  return n
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token, seq, outcome, err = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local max_failures, retry_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local history_len, started, worker = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]

local expiry = redis.call('ZSCORE', KEYS[2], token)
local lease_lost = (not expiry) or tonumber(expiry) < now
redis.call('ZREM', KEYS[2], token)
local counts = redis.call('HMGET', KEYS[1], 'runs', 'failures')
local runs = count(counts[1])
local superseded = lease_lost and seq > 0 and runs > seq
if seq == 0 then lease_lost = false end
local finished = string.format('%.3f', now / 1000)

local failures = 0
local stopped = 0
local retry_at = 0
if not superseded then
  if outcome == 'ok' then
    redis.call('HSET', KEYS[1], 'failures', 0, 'last_finished_at', finished,
      'last_success_at', finished)
    redis.call('HDEL', KEYS[1], 'retry_at')
  elseif outcome == 'interrupted' then
    redis.call('HSET', KEYS[1], 'last_finished_at', finished)
  else
    failures = count(counts[2]) + 1
    redis.call('HSET', KEYS[1], 'failures', failures, 'last_finished_at', finished,
      'last_error', err, 'last_error_at', finished)
    if failures >= max_failures then
      stopped = 1
      redis.call('HSET', KEYS[1], 'running', 0, 'stopped_by', 'max_failures',
        'stopped_at', finished, 'stop_reason',
        string.format('failed %d times in a row (max_failures=%d); last error: %s',
          failures, max_failures, err))
      redis.call('HDEL', KEYS[1], 'retry_at')
    else
      retry_at = now + retry_ms
      redis.call('HSET', KEYS[1], 'retry_at', string.format('%.3f', retry_at / 1000))
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
redis.call('HINCRBY', KEYS[1], 'runs_' .. outcome, 1)
redis.call('HINCRBY', KEYS[1], 'duration_le_' .. bucket, 1)
redis.call('HINCRBY', KEYS[1], 'duration_ms_sum', duration_ms)

local entry = {
  run_id = string.match(token, '^[^@]*'), token = token, seq = seq, worker = worker,
  outcome = outcome,
  started_at = started / 1000, finished_at = now / 1000, duration = (now - started) / 1000,
  error = (err ~= '' and err) or cjson.null, lease_lost = lease_lost, superseded = superseded,
}
redis.call('LPUSH', KEYS[3], cjson.encode(entry))
redis.call('LTRIM', KEYS[3], 0, history_len - 1)
return {failures, stopped, superseded and 1 or 0, lease_lost and 1 or 0, retry_at}
