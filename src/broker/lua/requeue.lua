-- requeue: put a job this node will not run (shutdown, or a suspect about to
-- run alone) back at the head of its queue, so it runs next and spends no
-- attempt.
-- KEYS[1] the in-flight list holding the job
-- KEYS[2] the queue list K
-- KEYS[3] the queue's stats hash {K}:stats
-- ARGV[1] the item exactly as it was taken
-- ARGV[2] '1' to count it as recovered (an interrupted job), '0' not to
-- ARGV[3] (optional) what to push instead of the item: a raw payload wrapped
--         in an envelope, so the job keeps the id its events used
-- Returns 1 when requeued; 0 when the item was no longer in flight.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[3] or ARGV[1])
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[3], 'recovered', 1)
end
return 1
