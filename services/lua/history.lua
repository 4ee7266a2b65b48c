-- history: a library, not a script. A script that records runs names it in its header
-- (`-- include: history`) and services/scripts.py puts this file before it.
--
-- push_history(state_key, history_key, entry, max_len, max_bytes)
--   Pushes one JSON entry onto a service's history list (newest first), then drops the
--   oldest entries until at most max_len entries and max_bytes bytes of entries are left;
--   the newest entry always stays, however long. The bytes kept are counted in the state
--   hash's `history_bytes` field; a list without that count (an older version wrote it) is
--   measured once, and a list that had been deleted starts again from its one entry.

local function push_history(state_key, history_key, entry, max_len, max_bytes)
  local size = tonumber(redis.call('HGET', state_key, 'history_bytes') or '')
  if size == nil or size < 0 then
    size = 0
    for _, old in ipairs(redis.call('LRANGE', history_key, 0, -1)) do size = size + #old end
  end
  local len = redis.call('LPUSH', history_key, entry)
  size = (len == 1) and #entry or (size + #entry)
  while len > 1 and (len > max_len or size > max_bytes) do
    size = size - #redis.call('RPOP', history_key)
    len = len - 1
  end
  redis.call('HSET', state_key, 'history_bytes', size)
end

