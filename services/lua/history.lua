-- history: a library, not a script. A script that records runs names it in its header
-- (`-- include: history`) and services/scripts.py puts this file before it.
--
-- push_history(state_key, history_key, entry, max_len, max_bytes, seq)
--   Pushes one JSON entry onto a service's history list (newest first), then drops the
--   oldest entries until at most max_len entries and max_bytes bytes of entries are left;
--   the newest entry always stays, however long. The state hash counts what the list holds
--   (`history_bytes`, `history_count`). The list is measured again (one LRANGE of at most
--   max_len entries) whenever the counts cannot be trusted: missing, an entry count that
--   differs from LLEN (an entry was removed or the list deleted behind this function's back),
--   and every 64th run by `seq` (0 for a record of no run), which bounds the life of any
--   drift an older version's LPUSH/LTRIM left during a rolling upgrade.

local function history_size(history_key)
  local size = 0
  for _, old in ipairs(redis.call('LRANGE', history_key, 0, -1)) do size = size + #old end
  return size
end

local function push_history(state_key, history_key, entry, max_len, max_bytes, seq)
  local held = redis.call('HMGET', state_key, 'history_bytes', 'history_count')
  local size, counted = tonumber(held[1] or ''), tonumber(held[2] or '')
  if size == nil or size < 0 or counted ~= redis.call('LLEN', history_key)
      or seq % 64 == 0 then
    size = history_size(history_key)
  end
  local len = redis.call('LPUSH', history_key, entry)
  size = size + #entry
  while len > 1 and (len > max_len or size > max_bytes) do
    size = size - #redis.call('RPOP', history_key)
    len = len - 1
  end
  if len == 1 then size = #entry end
  redis.call('HSET', state_key, 'history_bytes', size, 'history_count', len)
end

