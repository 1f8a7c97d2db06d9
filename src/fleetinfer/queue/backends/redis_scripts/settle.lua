-- Settle deliveries by receipt, atomically. A receipt (entry_id, token) holds its message while
-- the receipts hash maps entry_id to token and the lease in `inflight` has not expired.
-- KEYS: stream, inflight, retry, dead, receipts, dedup
-- ARGV: op, group, arg, entry_id_1, token_1, entry_id_2, token_2, ...
--   op 'ack'     delete the messages                      (arg unused)
--   op 'release' visible again after arg milliseconds     (stays in the PEL; counted on reclaim)
--   op 'extend'  lease ends arg milliseconds from now
--   op 'dead'    move to the dead-letter stream, reason = arg
-- Returns the 1-based positions of the receipts that no longer held their message.
local stream, inflight, retry, dead, receipts, dedup =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local op, group, arg = ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = {}

local function holds(entry_id, token)
  if redis.call('HGET', receipts, entry_id) ~= token then return false end
  local deadline = redis.call('ZSCORE', inflight, entry_id)
  return deadline and tonumber(deadline) > now
end

local function fields_of(entry_id)
  local entry = redis.call('XRANGE', stream, entry_id, entry_id)[1]
  local f = {}
  if entry then
    for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  end
  return f
end

local function drop(entry_id)
  if redis.call('HLEN', dedup) > 0 then  -- only sends with dedup ids need the entry read
    local dedup_id = fields_of(entry_id)['dedup']
    if dedup_id then redis.call('HDEL', dedup, dedup_id) end
  end
  redis.call('XACK', stream, group, entry_id)
  redis.call('XDEL', stream, entry_id)
  redis.call('ZREM', inflight, entry_id)
  redis.call('HDEL', receipts, entry_id)
end

local function bury(entry_id)
  local pending = redis.call('XPENDING', stream, group, entry_id, entry_id, 1)[1]
  local f = fields_of(entry_id)
  -- an entry written by anyone with access to Redis may lack fields: bury it all the same
  redis.call('XADD', dead, '*', 'id', f['id'] or entry_id, 'body', f['body'] or '',
    'sent_at', f['sent_at'] or '0',
    'reason', arg, 'receive_count', pending and pending[4] or 0,
    'dead_at', string.format('%.3f', now / 1000), 'dedup', f['dedup'] or '')
  drop(entry_id)
end

for i = 4, #ARGV, 2 do
  local entry_id, token = ARGV[i], ARGV[i + 1]
  if not holds(entry_id, token) then
    stale[#stale + 1] = (i - 2) / 2
  elseif op == 'ack' then
    drop(entry_id)
  elseif op == 'release' then
    redis.call('ZREM', inflight, entry_id)
    redis.call('HDEL', receipts, entry_id)
    redis.call('ZADD', retry, now + tonumber(arg), entry_id)
  elseif op == 'extend' then
    redis.call('ZADD', inflight, now + tonumber(arg), entry_id)
  elseif op == 'dead' then
    bury(entry_id)
  else
    return redis.error_reply('unknown settle op ' .. op)
  end
end
return stale
