-- requeue: put a job this node will not finish (shutdown) back at the head
-- of its queue, unchanged, so it runs next and spends no attempt.
-- KEYS[1] the in-flight list holding the job
-- KEYS[2] the queue list K
-- KEYS[3] the queue's stats hash {K}:stats
-- ARGV[1] the item exactly as it was taken
-- Returns 1 when requeued; 0 when the item was no longer in flight.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'recovered', 1)
return 1
