-- Move up to ARGV[1] dead letters (oldest first) back to the stream as fresh messages.
-- KEYS: stream, dead
local moved = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', tonumber(ARGV[1]))) do
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  redis.call('XADD', KEYS[1], '*', 'id', f['id'], 'body', f['body'], 'sent_at', f['sent_at'])
  redis.call('XDEL', KEYS[2], entry[1])
  moved = moved + 1
end
return moved
