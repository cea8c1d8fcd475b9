-- tick: enqueue one tick of a schedule, once however many daemons try it.
-- KEYS[1] the queue list K
-- KEYS[2] {K}:schedule:<name>: the last tick enqueued (unix seconds)
-- KEYS[3] {K}:schedule:<name>:spec: what that tick was computed from
-- KEYS[4] {K}:unique:<key>: the lock of a schedule whose jobs are unique
--         (any key of the queue's slot otherwise; it is not touched)
-- ARGV[1] the tick (unix seconds)
-- ARGV[2] the schedule's spec (an edited schedule starts afresh)
-- ARGV[3] the job's envelope
-- ARGV[4] the job's id, the lock's value
-- ARGV[5] the lock's lifetime in ms; '0' for no lock
-- Returns 1 enqueued; 0 this tick or a later one was handled already;
-- 2 a new or edited schedule: the tick is recorded as where it starts and
-- nothing is enqueued (its first job is the next tick's); 3 the tick is
-- recorded but skipped: an earlier tick's job still holds the lock.
local last = tonumber(redis.call('GET', KEYS[2]))
if last == nil or redis.call('GET', KEYS[3]) ~= ARGV[2] then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[2])
  return 2
end
if last >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1])
if ARGV[5] ~= '0' and not redis.call('SET', KEYS[4], ARGV[4], 'NX', 'PX', ARGV[5]) then
  return 3
end
redis.call('RPUSH', KEYS[1], ARGV[3])
return 1
