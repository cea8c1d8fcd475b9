-- ratelimit: may one more job start within the sliding window? If so, the
-- start is logged in the same step, so two daemons can never both take the
-- last slot.
-- KEYS[1] the window's log: {K}:ratelimit, or {K}:ratelimit:<key> when the
--         queue's limit is keyed by a payload field
-- ARGV[1] now, in ms since the epoch
-- ARGV[2] the window, in ms
-- ARGV[3] the limit: starts allowed per window
-- ARGV[4] a member unique to this start (job id and time)
-- Returns 0 when the start is allowed and logged; otherwise the ms until the
-- oldest logged start leaves the window (at least 1).
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
