-- deliver_once: add one outbox message to a stream unless that message id was delivered
-- before, so a message re-claimed after a worker died between XADD and its database commit
-- is never added twice.
--
-- KEYS[1]  stream          <prefix>:outbox:<stream>
-- KEYS[2]  delivered zset  <prefix>:outbox:<stream>:delivered   member = message id,
--                          score = when it was delivered (ms)
-- ARGV[1]  message_id
-- ARGV[2]  dedupe_ms       delivered ids older than this are forgotten
-- ARGV[3]  maxlen          approximate cap of the stream (XADD MAXLEN ~); 0 for none
-- ARGV[4..] field, value, field, value ...  the stream entry
--
-- Returns {1, entry_id} when added now, {0, ''} when the id had been delivered already.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local message_id, dedupe_ms, maxlen = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

if redis.call('ZSCORE', KEYS[2], message_id) then
  return {0, ''}
end

local args = {KEYS[1]}
if maxlen > 0 then
  table.insert(args, 'MAXLEN')
  table.insert(args, '~')
  table.insert(args, maxlen)
end
table.insert(args, '*')
for i = 4, #ARGV do
  table.insert(args, ARGV[i])
end
local entry_id = redis.call('XADD', unpack(args))

redis.call('ZADD', KEYS[2], now, message_id)
-- Trim as we go: each call removes only the ids that aged out since the last one.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - dedupe_ms)
return {1, entry_id}
