-- restore_state: after Redis lost its data, put back one service's flags as a worker last saw
-- them. The safe reading wins: a pause or stop that any worker remembers stays, whoever
-- restores first; an operator's action since the loss is never overwritten.
--
-- KEYS[1]  state hash   <prefix>:<name>
-- KEYS[2]  audit list   <prefix>:<name>:audit (newest first)
-- KEYS[3]  epoch hash   <prefix>:_epoch
-- ARGV[1]  epoch        the epoch id the worker saw the loss in (nothing happens if it changed)
-- ARGV[2]  running      1 | 0, as the worker last saw it
-- ARGV[3]  paused       1 | 0, as the worker last saw it
-- ARGV[4]  stop_reason  the stop reason the worker saw ('' when running)
-- ARGV[5]  seen_at      when the worker saw it (epoch seconds, for the audit entry)
-- ARGV[6]  who          the worker (host:pid)
-- ARGV[7]  audit_len    how many entries the audit list keeps
--
-- Returns 'restored', 'merged' (another worker restored it first; the safer flags kept,
-- whichever restores first and whatever the hash still held),
-- 'operator' (an operator acted since the loss; nothing changed) or 'stale' (epoch changed).

local e = redis.call('HMGET', KEYS[3], 'id', 'lost_at')
if e[1] ~= ARGV[1] or not e[2] then return 'stale' end
local h = redis.call('HMGET', KEYS[1], 'epoch', 'change', 'running', 'paused')
if h[2] then return 'operator' end

local running, paused, reason = ARGV[2], ARGV[3], ARGV[4]
local verdict = 'restored'
if h[1] == ARGV[1] then verdict = 'merged' end
-- Whatever the hash still holds (another worker's restore, a pause that survived because only
-- the epoch key went) is merged, never overwritten: a pause or a stop always wins.
if h[3] == '0' then running = '0' end
if h[4] == '1' then paused = '1' end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'running', running, 'paused', paused,
  'restored_by', ARGV[6], 'restored_at', e[2])
if running == '0' and reason ~= '' then
  redis.call('HSET', KEYS[1], 'stop_reason', reason .. ' (restored after Redis lost its data)',
    'stopped_by', 'restored')
end
local seen = 'running'
if running == '0' then seen = 'stopped' elseif paused == '1' then seen = 'paused' end
redis.call('LPUSH', KEYS[2], cjson.encode({action = 'restore', by = ARGV[6],
  at = tonumber(e[2]) / 1000,
  reason = string.format('Redis lost its data; restored as %s, as this worker saw it at %s',
    seen, ARGV[5])}))
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
return verdict
