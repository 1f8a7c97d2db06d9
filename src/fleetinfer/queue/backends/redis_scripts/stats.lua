-- Depths at one instant. Stream entries are live messages (acked ones are deleted); a leased
-- entry is in flight until its deadline, a released one delayed until its due time.
-- KEYS: stream, inflight, retry, delayed, dead
-- Returns { visible, in_flight, delayed, dead }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('XLEN', KEYS[1])
local in_flight = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
local retry_later = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
local parked = redis.call('ZCARD', KEYS[4])
local parked_later = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
local visible = live - in_flight - retry_later + parked - parked_later
return { visible, in_flight, retry_later + parked_later, redis.call('XLEN', KEYS[5]) }
