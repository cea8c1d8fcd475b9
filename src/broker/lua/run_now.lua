-- run_now: move a scheduled job to the head of its queue, if it is still
-- scheduled; it runs next, whatever its due time was.
-- KEYS[1] the scheduled set {K}:scheduled
-- KEYS[2] the queue list K
-- ARGV[1] the item as scheduled
-- Returns 1 when the job was moved, 0 when it was no longer scheduled.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
