-- dead: a job cannot succeed (permanent failure, attempts exhausted,
-- malformed item, poison); park it in the capped dead letter list.
-- KEYS[1] the in-flight list holding the job
-- KEYS[2] the queue's dead letter list {K}:dead
-- KEYS[3] the queue's stats hash {K}:stats
-- KEYS[4] (optional) the unique lock the job holds {K}:unique:<key>
-- ARGV[1] the item exactly as it was taken
-- ARGV[2] the dead envelope (last_error, died_at)
-- ARGV[3] the dead list's length cap
-- ARGV[4] the job id (the unique lock is released only if this job holds it)
-- Returns 1 when recorded; 0 when the item was no longer in flight.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
redis.call('HINCRBY', KEYS[3], 'processed', 1)
redis.call('HINCRBY', KEYS[3], 'failed', 1)
redis.call('HINCRBY', KEYS[3], 'dead', 1)
if KEYS[4] and redis.call('GET', KEYS[4]) == ARGV[4] then
  redis.call('DEL', KEYS[4])
end
return 1
