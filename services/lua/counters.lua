-- counters: a library, not a script. A script that counts names it in its header
-- (`-- include: counters`) and services/scripts.py puts this file before it.
--
-- count(value)
--   A count or time as Redis holds it; missing, unreadable, 'nan', 'inf' or hex (which
--   tonumber() accepts) is 0.
-- count_plus(value, by)
--   The counter `value` after adding `by`, as digits for HSET. HINCRBY is not used: it
--   fails the whole script on a hand-edited value ("hash value is not an integer"), halfway
--   through its writes. A value that is not a count, or one beyond 2^53 (where a Lua number
--   stops being exact, so the sum could come out lower or overflow), starts again from 0:
--   Prometheus reads a counter that drops as a reset.

local COUNTER_LIMIT = 2 ^ 53

local function count(value)
  local n = tonumber(value or '0')
  if n == nil or n ~= n or n == math.huge or n == -math.huge or string.find(value or '', '[xX]') then
    return 0
  end
  return n
end

local function count_plus(value, by)
  local n = count(value)
  if n >= COUNTER_LIMIT or n <= -COUNTER_LIMIT then n = 0 end
  return string.format('%d', n + by)
end
