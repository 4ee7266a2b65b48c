-- renew_lease: extend one run's lease while its update() is still running.
--
-- KEYS[1]  lease zset   <prefix>:<name>:lease
-- ARGV[1]  token        the run's token
-- ARGV[2]  lease_ms     the new lease length, from now (shorter than the lease near a run's
--                        hard time limit: a lease is never renewed past it)
--
-- Returns 1 when renewed, 0 when the lease is gone (expired, taken over, or removed by an
-- operator): the run has lost it and must not act as its owner.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) < now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
-- The key's TTL only ever grows here: other runs' leases (max_concurrent_runs > 1) may last
-- longer than this one.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
