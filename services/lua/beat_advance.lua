-- beat_advance: move services' due times, only for the leader that holds the lease now. This
-- is the send path's fence: Beat sends a service's ticks only after this script advanced its
-- due time, so a Beat that lost its lease (paused, frozen, cut off) cannot send anything.
-- Each change is a compare-and-set on the due time the caller read: a service another Beat or
-- a schedule change moved in between is left alone (and not sent).
--
-- KEYS[1]  leader string   <prefix>:_beat:leader   must equal ARGV[1]
-- KEYS[2]  due zset        <prefix>:_due
-- KEYS[3]  signature hash  <prefix>:_due:signature name -> the schedule the due time is from
-- ARGV[1]  lease value     '<fence> <holder>' of the caller
-- ARGV[2]  n               how many changes follow, four arguments each:
--          name, expected due ('' = not scheduled), new due ('' = unschedule),
--          signature ('' = leave as it is)
--
-- Returns {'ok', name...} with the names changed, or {'deposed', leader} when the caller
-- does not hold the lease (leader = its value now, '' if nobody holds it).

local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then return {'deposed', current or ''} end
local changed = {'ok'}
for i = 0, tonumber(ARGV[2]) - 1 do
  local name, expected = ARGV[3 + i * 4], ARGV[4 + i * 4]
  local new, signature = ARGV[5 + i * 4], ARGV[6 + i * 4]
  local score = redis.call('ZSCORE', KEYS[2], name)
  if (expected == '' and not score) or (score and expected ~= ''
      and tonumber(score) == tonumber(expected)) then
    if new == '' then
      redis.call('ZREM', KEYS[2], name)
      redis.call('HDEL', KEYS[3], name)
    else
      redis.call('ZADD', KEYS[2], new, name)
      if signature ~= '' then redis.call('HSET', KEYS[3], name, signature) end
    end
    table.insert(changed, name)
  end
end
return changed
