-- enqueue_unique: enqueue a job unless another job holds its unique lock,
-- announcing it (event, status record) before it can be taken, and only if
-- it was enqueued.
-- KEYS[1] the queue list K
-- KEYS[2] the queue's scheduled set {K}:scheduled
-- KEYS[3] the unique lock {K}:unique:<key>
-- KEYS[4] (optional) the events replay stream
-- KEYS[5..] (optional) the job's status record conveyor:job:<id>, which
--           ARGV[8] names by index
-- ARGV[1] the envelope
-- ARGV[2] the job id, stored in the lock
-- ARGV[3] when it is due, in ms since the epoch; 0 for now
-- ARGV[4] how long the lock lives, in ms
-- ARGV[5] the events channel, '' for no event
-- ARGV[6] the job.enqueued event
-- ARGV[7] the replay stream's approximate length, 0 for none
-- ARGV[8] the index in KEYS of the job's status record, 0 for none; if
--         not 0, ARGV[9] its lifetime in ms, ARGV[10] a count n and
--         ARGV[11..] n field-value pairs (the status record's shape in
--         finish.lua and recover.lua too)
-- Returns {1, id} when enqueued, {0, holder's id} when the lock is taken.
if not redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[4]) then
  return {0, redis.call('GET', KEYS[3]) or ''}
end
local track = tonumber(ARGV[8])
if track > 0 then
  redis.call('HSET', KEYS[track], unpack(ARGV, 11, 10 + 2 * tonumber(ARGV[10])))
  redis.call('PEXPIRE', KEYS[track], ARGV[9])
end
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  if tonumber(ARGV[7]) > 0 then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'events', ARGV[6] .. '\n')
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
return {1, ARGV[2]}
