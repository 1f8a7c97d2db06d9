-- Depths at one instant. Stream entries are live messages (acked ones are deleted); a leased
-- entry is in flight until its deadline, a released one delayed until its due time.
-- The oldest visible message: the first of the oldest ARGV[1] stream entries that is neither
-- leased nor waiting to be retried, or a delayed send already due, whichever was sent first.
-- KEYS: stream, inflight, retry, delayed, dead, delayed_bodies
-- ARGV: how many stream entries to look through for the oldest visible one
-- Returns { visible, in_flight, delayed, dead, sent_at of the oldest visible ('' if none) }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('XLEN', KEYS[1])
local in_flight = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
local retry_later = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
local parked = redis.call('ZCARD', KEYS[4])
local parked_later = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
local visible = live - in_flight - retry_later + parked - parked_later

local function waiting(zset, entry_id)
  local due = redis.call('ZSCORE', zset, entry_id)
  return due and tonumber(due) > now
end

local oldest = nil
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[1]))) do
  if not waiting(KEYS[2], entry[1]) and not waiting(KEYS[3], entry[1]) then
    for i = 1, #entry[2], 2 do
      if entry[2][i] == 'sent_at' then oldest = tonumber(entry[2][i + 1]) end
    end
    break
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 100)) do
  local payload = redis.call('HGET', KEYS[6], id)
  if payload then
    local sent_at = tonumber(string.sub(payload, 1, string.find(payload, '\n', 1, true) - 1))
    if oldest == nil or sent_at < oldest then oldest = sent_at end
  end
end
local shown = ''
if oldest ~= nil then shown = string.format('%.6f', oldest) end
return { visible, in_flight, retry_later + parked_later, redis.call('XLEN', KEYS[5]), shown }
