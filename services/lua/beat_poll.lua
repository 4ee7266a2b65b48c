-- beat_poll: what one pass of the leader Beat needs, in one round trip.
--
-- KEYS[1]  leader string    <prefix>:_beat:leader
-- KEYS[2]  version counter  <prefix>:_schedules:version
-- KEYS[3]  due zset         <prefix>:_due   member = service name, score = due time (ms)
-- ARGV[1]  limit            at most this many due services
--
-- Returns {now_ms, leader, version, due, next_ms}: leader = the lease's value ('' if none);
-- due = {name1, due1, name2, due2, ...}, oldest first, every service due at now_ms or
-- before (at most limit); next_ms = the earliest due time after those ('' when none).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local after = redis.call('ZRANGE', KEYS[3], #due / 2, #due / 2, 'WITHSCORES')
return {now, redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or '0', due,
  after[2] or ''}
