-- enqueue_unique: enqueue a job unless another job holds its unique lock.
-- KEYS[1] the queue list K
-- KEYS[2] the queue's scheduled set {K}:scheduled
-- KEYS[3] the unique lock {K}:unique:<key>
-- ARGV[1] the envelope
-- ARGV[2] the job id, stored in the lock
-- ARGV[3] when it is due, in ms since the epoch; 0 for now
-- ARGV[4] how long the lock lives, in ms
-- Returns {1, id} when enqueued, {0, holder's id} when the lock is taken.
if not redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[4]) then
  return {0, redis.call('GET', KEYS[3]) or ''}
end
if tonumber(ARGV[3]) > 0 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
return {1, ARGV[2]}
