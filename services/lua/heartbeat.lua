-- heartbeat: a worker or Beat says it is alive (beat), or that it stops (retire). The
-- process's hash expires unless renewed, so a process that died or froze is gone from it
-- within ttl_ms; the sorted set remembers when each process was last seen, for a day, so a
-- process that is gone is still listed as gone. Times are the Redis server's clock.
--
-- KEYS[1]  process hash     <prefix>:_process:<id>   fields below, expiring
-- KEYS[2]  processes zset   <prefix>:_processes      id -> last heartbeat (ms)
-- ARGV[1]  op               beat | retire
-- ARGV[2]  id               the process's id (kind:host:pid)
-- ARGV[3]  ttl_ms           how long the hash lives without another beat
-- ARGV[4]  forget_ms        entries of the sorted set older than this are dropped
-- ARGV[5..] field, value    pairs written into the hash (beat only): kind, host, pid,
--                           services, queues, role...; seen_at and started_at (ms) are
--                           stamped here
--
-- Returns the Redis server's time in ms.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, id = ARGV[1], ARGV[2]
local ttl_ms, forget_ms = tonumber(ARGV[3]), tonumber(ARGV[4])

if op == 'retire' then
  redis.call('DEL', KEYS[1])
  redis.call('ZADD', KEYS[2], now, id)
  return now
end

for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'seen_at', now)
redis.call('HSETNX', KEYS[1], 'started_at', now)
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('ZADD', KEYS[2], now, id)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - forget_ms)
return now
