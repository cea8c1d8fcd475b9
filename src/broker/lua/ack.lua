-- ack: a job succeeded. It leaves the in-flight list in the same step that
-- counts it, so a job is never both done and in flight.
-- KEYS[1] the in-flight list holding the job
-- KEYS[2] the queue's stats hash {K}:stats
-- KEYS[3] (optional) the unique lock the job holds {K}:unique:<key>
-- ARGV[1] the item exactly as it was taken
-- ARGV[2] the job id (the unique lock is released only if this job holds it)
-- Returns 1 when recorded; 0 when the item was no longer in flight (a reaper
-- gave it to another node): then nothing is recorded.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[2], 'processed', 1)
if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[2] then
  redis.call('DEL', KEYS[3])
end
return 1
