-- Park delayed sends until they are due; receive.lua promotes them into the stream.
-- KEYS: delayed, delayed_bodies
-- ARGV: delay_ms, id_1, payload_1, id_2, payload_2, ...  (payload = sent_at .. '\n' .. body)
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], due, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return (#ARGV - 1) / 2
