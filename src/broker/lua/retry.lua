-- retry: a run failed and attempts are left; schedule the next one.
-- KEYS[1] the in-flight list holding the job
-- KEYS[2] the queue's scheduled set {K}:scheduled
-- KEYS[3] the queue's stats hash {K}:stats
-- ARGV[1] the item exactly as it was taken
-- ARGV[2] the envelope to run next (attempt counted, last_error set)
-- ARGV[3] when it is due, in ms since the epoch
-- Returns 1 when recorded; 0 when the item was no longer in flight.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'processed', 1)
redis.call('HINCRBY', KEYS[3], 'failed', 1)
redis.call('HINCRBY', KEYS[3], 'retried', 1)
return 1
