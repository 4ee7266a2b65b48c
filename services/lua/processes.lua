-- processes: every worker and Beat seen in the last day, with its heartbeat hash when it is
-- alive, in one round trip (svc workers, svc health, the services page, metrics).
-- The hashes' names are built here from the prefix, because the ids are only known once the
-- sorted set is read: the framework's keys live on one Redis (no cluster slots).
--
-- KEYS[1]  processes zset   <prefix>:_processes   id -> last heartbeat (ms)
-- ARGV[1]  hash prefix      '<prefix>:_process:'  (+ id = the process's hash)
--
-- Returns {now_ms, id1, last_seen1, {field, value, ...}, id2, ...}; the list is empty
-- ({}) for a process whose hash expired (it is gone).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rows = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local reply = {now}
for i = 1, #rows, 2 do
  local id = rows[i]
  reply[#reply + 1] = id
  reply[#reply + 1] = rows[i + 1]
  local ok, fields = pcall(redis.call, 'HGETALL', ARGV[1] .. id)
  reply[#reply + 1] = ok and fields or {}
end
return reply
