-- control: one operator action on one service, recorded with who, when and why.
--
-- KEYS[1]  state hash   <prefix>:<name>                     (a hash, or absent)
-- KEYS[2]  audit list   <prefix>:<name>:audit, newest first (a list, or absent)
-- ARGV[1]  action       pause | resume | stop | start | reset
-- ARGV[2]  who          the actor (user@host, or a process)
-- ARGV[3]  reason       free text, may be ''
-- ARGV[4]  audit_len    how many actions the audit list keeps
--
-- Returns the audit entry as JSON. start clears a stop and the failure count; reset clears the
-- failure count and backoff, and undoes a stop that max_failures caused (not an operator's).
--
-- Both keys' types are checked before anything is written: a script is not rolled back when a
-- command fails half-way, so an audit key of the wrong type would otherwise let the change
-- land without its audit entry. Such a key gets an error reply that starts with WRONGTYPE, as
-- Redis's own does, names the key and says what was expected; nothing is changed.

local function wrong_type(key, expected)
  local found = redis.call('TYPE', key)['ok']
  if found ~= expected and found ~= 'none' then
    return redis.error_reply('WRONGTYPE control: ' .. key .. ' is a ' .. found .. ', expected a '
      .. expected .. ' (or no key); nothing was changed')
  end
  return nil
end

local refused = wrong_type(KEYS[1], 'hash') or wrong_type(KEYS[2], 'list')
if refused then return refused end

local t = redis.call('TIME')
local now = string.format('%.3f', (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) / 1000)
local action, who, reason = ARGV[1], ARGV[2], ARGV[3]
local state = KEYS[1]

if action == 'pause' then
  redis.call('HSET', state, 'paused', 1)
elseif action == 'resume' then
  redis.call('HSET', state, 'paused', 0)
elseif action == 'stop' then
  local why = 'stopped by ' .. who
  if reason ~= '' then why = why .. ': ' .. reason end
  redis.call('HSET', state, 'running', 0, 'stop_reason', why, 'stopped_by', who, 'stopped_at', now)
elseif action == 'start' then
  redis.call('HSET', state, 'running', 1, 'failures', 0)
  redis.call('HDEL', state, 'stop_reason', 'stopped_by', 'stopped_at', 'retry_at')
elseif action == 'reset' then
  redis.call('HSET', state, 'failures', 0)
  redis.call('HDEL', state, 'retry_at')
  if redis.call('HGET', state, 'stopped_by') == 'max_failures' then
    redis.call('HSET', state, 'running', 1)
    redis.call('HDEL', state, 'stop_reason', 'stopped_by', 'stopped_at')
  end
else
  return redis.error_reply('control: unknown action ' .. action)
end

redis.call('HSET', state, 'changed_at', now, 'changed_by', who, 'change', action,
  'change_reason', reason)
local entry = cjson.encode({action = action, by = who, reason = reason, at = tonumber(now)})
redis.call('LPUSH', KEYS[2], entry)
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
return entry
