-- history: a library, not a script. A script that records runs names it in its header
-- (`-- include: history`) and services/scripts.py puts this file before it.
--
-- push_history(history_key, entry, max_len, max_bytes, seq, held_bytes, held_count)
--   Pushes one JSON entry onto a service's history list (newest first), then drops the
--   oldest entries until at most max_len entries and max_bytes bytes of entries are left;
--   the newest entry always stays, however long. Returns the bytes and entries the list
--   then holds, for the caller to store in the state hash (`history_bytes`,
--   `history_count`), which reads those two fields with its own HMGET of the hash.
--   held_bytes, held_count: those two fields as the caller read them (nil if missing). The
--   list is measured again (one LRANGE of at most max_len + 1 entries) whenever they cannot
--   be trusted: missing, a count that differs from the list's length before this push (an
--   entry was removed or the list deleted behind this function's back), and every 64th run
--   by `seq` (0 for a record of no run), which bounds the life of any drift an older
--   version's LPUSH/LTRIM left during a rolling upgrade.
--
-- push_history_counted(state_key, history_key, entry, max_len, max_bytes, seq)
--   The same for a caller that does not read and write the state hash itself: reads the two
--   fields, pushes, writes them back.

local function history_size(history_key)
  local size = 0
  for _, old in ipairs(redis.call('LRANGE', history_key, 0, -1)) do size = size + #old end
  return size
end

local function push_history(history_key, entry, max_len, max_bytes, seq, held_bytes,
                            held_count)
  local size, counted = tonumber(held_bytes or ''), tonumber(held_count or '')
  local len = redis.call('LPUSH', history_key, entry)
  if size == nil or size < 0 or counted ~= len - 1 or seq % 64 == 0 then
    size = history_size(history_key)
  else
    size = size + #entry
  end
  while len > 1 and (len > max_len or size > max_bytes) do
    size = size - #redis.call('RPOP', history_key)
    len = len - 1
  end
  if len == 1 then size = #entry end
  return size, len
end

local function push_history_counted(state_key, history_key, entry, max_len, max_bytes, seq)
  local held = redis.call('HMGET', state_key, 'history_bytes', 'history_count')
  local size, len = push_history(history_key, entry, max_len, max_bytes, seq, held[1], held[2])
  redis.call('HSET', state_key, 'history_bytes', size, 'history_count', len)
end
