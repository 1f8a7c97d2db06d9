-- Send bodies with deduplication ids: a body whose dedup id is held by a live message (in the
-- stream, in flight, released or parked as a delayed send) is not queued again. A delayed
-- send keeps its dedup id in delayed_bodies under '<id>:dedup' until receive.lua promotes it.
-- KEYS: stream, delayed, delayed_bodies, dedup
-- ARGV: delay_ms, sent_at, id_1, dedup_1, body_1, id_2, dedup_2, body_2, ...
-- Returns the message id queued for each body (the earlier message's id for a duplicate).
local stream, delayed, bodies, dedup = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local delay_ms, sent_at = tonumber(ARGV[1]), ARGV[2]
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay_ms
local out = {}
for i = 3, #ARGV, 3 do
  local id, dedup_id, body = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSETNX', dedup, dedup_id, id) == 1 then
    if delay_ms > 0 then
      redis.call('ZADD', delayed, due, id)
      redis.call('HSET', bodies, id, sent_at .. '\n' .. body, id .. ':dedup', dedup_id)
    else
      redis.call('XADD', stream, '*', 'id', id, 'body', body, 'sent_at', sent_at,
        'dedup', dedup_id)
    end
    out[#out + 1] = id
  else
    out[#out + 1] = redis.call('HGET', dedup, dedup_id)
  end
end
return out
