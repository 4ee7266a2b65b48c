-- health_note: record a service's health as one watcher saw it, and decide, by compare-and-set,
-- whether this call is the one that notifies its transition. Any number of processes may
-- call it for the same service at the same time: the field changes in one script, so exactly
-- one call returns sent = 1 per transition, cluster-wide.
--
-- A transition is notified once its status has held for hold_ms (a blip shorter than that is
-- recorded, never notified). 'alert' statuses notify; 'healthy' ones (ok, paused) notify a
-- recovery only when an alert was the last thing notified; 'quiet' ones (failing) notify
-- only after an alert was notified (the service left it, but is not well).
--
-- KEYS[1]  health hash   <prefix>:_health   name -> JSON {status, since, detail, notified,
--                                           notified_at}; times in ms, Redis's clock
-- ARGV[1]  name          the service
-- ARGV[2]  status        ok | paused | failing | stopped | overdue | stuck | ...
-- ARGV[3]  detail        one line saying why (kept with the status)
-- ARGV[4]  class         alert | healthy | quiet
-- ARGV[5]  hold_ms       how long an alert status must hold before it is notified
--
-- Returns {sent, previous, since_ms, now_ms}: sent = 1 when this call won the transition
-- (the caller notifies); previous = the status notified before it ('ok' when none).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local name, status, detail, class = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local hold_ms = tonumber(ARGV[5]) or 0

local raw = redis.call('HGET', KEYS[1], name)
local ok, cur = pcall(cjson.decode, raw or '')
if not ok or type(cur) ~= 'table' then cur = {} end
local changed = false
if cur.status ~= status or type(cur.since) ~= 'number' then
  cur.status, cur.since, changed = status, now, true
end
if cur.detail ~= detail then cur.detail, changed = detail, true end
local notified = type(cur.notified) == 'string' and cur.notified or 'ok'

local want = nil
if class == 'alert' and now - cur.since >= hold_ms then
  want = status
elseif class == 'healthy' then
  want = 'ok'
elseif class == 'quiet' and notified ~= 'ok' then
  -- Failing after an alert (stopped, then started and failing again): said, so that the
  -- next alert is a transition too and a recovery is not reported from the wrong state.
  want = status
end

local sent = 0
if want ~= nil and want ~= notified then
  cur.notified, cur.notified_at, sent, changed = want, now, 1, true
end
if changed then redis.call('HSET', KEYS[1], name, cjson.encode(cur)) end
return {sent, notified, cur.since, now}
