-- Move up to ARGV[1] dead letters (oldest first) back to the stream as fresh messages. A dead
-- letter whose dedup id a live message holds again (it was resubmitted) is dropped instead.
-- KEYS: stream, dead, dedup
local moved = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', tonumber(ARGV[1]))) do
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  local dedup_id = f['dedup'] or ''
  if dedup_id == '' then
    redis.call('XADD', KEYS[1], '*', 'id', f['id'], 'body', f['body'], 'sent_at', f['sent_at'])
    moved = moved + 1
  elseif redis.call('HSETNX', KEYS[3], dedup_id, f['id']) == 1 then
    redis.call('XADD', KEYS[1], '*', 'id', f['id'], 'body', f['body'], 'sent_at', f['sent_at'],
      'dedup', dedup_id)
    moved = moved + 1
  end
  redis.call('XDEL', KEYS[2], entry[1])
end
return moved
