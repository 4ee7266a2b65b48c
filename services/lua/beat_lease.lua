-- beat_lease: the leader Beat's lease. One Beat at a time holds it; every other Beat is a
-- standby that tries to claim it each poll. Each claim takes a new fencing token (a counter
-- that only grows), and the lease's value holds it, so a deposed leader is told apart from
-- the current one by value, never by name.
--
-- KEYS[1]  leader string  <prefix>:_beat:leader   '<fence> <holder>', expiring
-- KEYS[2]  fence counter  <prefix>:_beat:fence
-- ARGV[1]  op             claim | renew | release
-- ARGV[2]  holder         host:pid:nonce of this Beat (claim) or its lease value (renew, release)
-- ARGV[3]  lease_ms       how long the lease lasts unless renewed (claim, renew)
--
-- Returns {held, value}: held = 1 when this Beat holds the lease after the call (0 after a
-- release); value = the lease's value now ('' when nobody holds it).

local op, holder, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local current = redis.call('GET', KEYS[1])
if op == 'claim' then
  if current then return {0, current} end
  local value = redis.call('INCR', KEYS[2]) .. ' ' .. holder
  redis.call('SET', KEYS[1], value, 'PX', lease_ms)
  return {1, value}
end
if op == 'renew' then
  if current ~= holder then return {0, current or ''} end
  redis.call('PEXPIRE', KEYS[1], lease_ms)
  return {1, current}
end
if op == 'release' then
  if current == holder then
    redis.call('DEL', KEYS[1])
    return {0, ''}
  end
  return {0, current or ''}
end
return redis.error_reply('beat_lease: op must be claim, renew or release, got ' .. tostring(op))
