-- promote: move scheduled jobs that are due to the tail of their queue.
-- KEYS[1] the queue's scheduled set {K}:scheduled
-- KEYS[2] the queue list K
-- ARGV[1] now, in ms since the epoch
-- ARGV[2] the most jobs to move in this call
-- Returns {moved, due time in ms of the next scheduled job or -1}.
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
  redis.call('RPUSH', KEYS[2], unpack(due))
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, next_due[2] or -1}
