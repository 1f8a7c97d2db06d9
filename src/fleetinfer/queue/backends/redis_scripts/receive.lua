-- Take up to ARGV[3] messages for consumer ARGV[2] of group ARGV[1], atomically:
-- promote due delayed sends into the stream, reclaim expired leases and due retries (XCLAIM:
-- the PEL delivery counter counts each delivery), dead-letter entries whose delivery count
-- reached max_receives (ARGV[5]) instead of delivering them, then read new entries.
-- KEYS: stream, inflight, retry, delayed, delayed_bodies, dead, receipts, dedup
-- ARGV: group, consumer, count, visibility_ms, max_receives, token_1 .. token_count
-- Returns { {entry_id, fields, receive_count, token}, ... }
local stream, inflight, retry, delayed, bodies, dead, receipts, dedup =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local group, consumer = ARGV[1], ARGV[2]
local count, visibility_ms, max_receives = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out, next_token = {}, 6

for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)) do
  local payload = redis.call('HGET', bodies, id)
  local dedup_id = redis.call('HGET', bodies, id .. ':dedup')
  if payload then
    local nl = string.find(payload, '\n', 1, true)
    local fields = { 'id', id, 'body', string.sub(payload, nl + 1),
      'sent_at', string.sub(payload, 1, nl - 1) }
    if dedup_id then
      fields[#fields + 1] = 'dedup'
      fields[#fields + 1] = dedup_id
    end
    redis.call('XADD', stream, '*', unpack(fields))
  end
  redis.call('ZREM', delayed, id)
  redis.call('HDEL', bodies, id, id .. ':dedup')
end

local function lease(entry_id, fields, deliveries)
  local token = ARGV[next_token]
  next_token = next_token + 1
  redis.call('ZADD', inflight, now + visibility_ms, entry_id)
  redis.call('HSET', receipts, entry_id, token)
  out[#out + 1] = { entry_id, fields, deliveries, token }
end

local function bury(entry_id, deliveries)
  local entry = redis.call('XRANGE', stream, entry_id, entry_id)[1]
  if entry then
    local f = {}
    for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
    redis.call('XADD', dead, '*', 'id', f['id'] or entry_id, 'body', f['body'] or '',
      'sent_at', f['sent_at'] or '0',
      'reason', 'exceeded max_receives=' .. ARGV[5], 'receive_count', deliveries,
      'dead_at', string.format('%.3f', now / 1000), 'dedup', f['dedup'] or '')
    if f['dedup'] then redis.call('HDEL', dedup, f['dedup']) end
  end
  redis.call('XACK', stream, group, entry_id)
  redis.call('XDEL', stream, entry_id)
end

local function reclaim(zset)
  while #out < count do
    local ids = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, count - #out)
    if #ids == 0 then return end
    for _, entry_id in ipairs(ids) do
      redis.call('ZREM', zset, entry_id)
      redis.call('HDEL', receipts, entry_id)
      local pending = redis.call('XPENDING', stream, group, entry_id, entry_id, 1)[1]
      local deliveries = pending and tonumber(pending[4]) or 0
      if deliveries >= max_receives then
        bury(entry_id, deliveries)
      else
        local claimed = redis.call('XCLAIM', stream, group, consumer, 0, entry_id)[1]
        if claimed then lease(entry_id, claimed[2], deliveries + 1) end
      end
    end
  end
end

reclaim(inflight)
reclaim(retry)
if #out < count then
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #out,
    'STREAMS', stream, '>')
  if read then
    for _, entry in ipairs(read[1][2]) do lease(entry[1], entry[2], 1) end
  end
end
return out
