-- snooze: a job may not start yet (over its queue's rate limit); schedule it
-- for when a slot frees. No attempt is spent and no failure is counted.
-- KEYS[1] the in-flight list holding the job
-- KEYS[2] the queue's scheduled set {K}:scheduled
-- ARGV[1] the item exactly as it was taken
-- ARGV[2] the envelope to run later (attempt unchanged)
-- ARGV[3] when it is due, in ms since the epoch
-- Returns 1 when recorded; 0 when the item was no longer in flight.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
