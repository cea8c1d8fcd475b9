-- finish: record the outcomes of many jobs of one queue at once. Each job
-- leaves the in-flight list in the same step that records its outcome, so a
-- job is never both finished and in flight; one whose item is no longer in
-- the list (a reaper gave it to another node) is skipped, and nothing is
-- recorded for it.
-- KEYS[1] the in-flight list holding the jobs
-- KEYS[2] the queue list K
-- KEYS[3] the queue's scheduled set {K}:scheduled
-- KEYS[4] the queue's dead letter list {K}:dead
-- KEYS[5] the queue's stats hash {K}:stats
-- KEYS[6] the queue's results list {K}:results
-- KEYS[7..] unique locks {K}:unique:<key> and status records
--           conveyor:job:<id> that entries name by index
-- ARGV[1] the dead list's length cap
-- ARGV[2] the results list's length cap; 0 when no job here is tracked
--         (then the list is not touched)
-- ARGV[3..] six values per job, and the status record's after them:
--   op    'ok' | 'retry' | 'dead' | 'snooze' | 'requeue'
--   item  the item exactly as it was taken
--   data  retry, snooze: the envelope to run later; dead: the dead envelope;
--         requeue: what to push back at the head ('' for the item itself)
--   num   retry, snooze: when it is due (ms since the epoch); ok, dead: the
--         index in KEYS of the job's unique lock (0 for none); requeue: 1 to
--         count it as recovered, 0 not to
--   id    ok, dead: the job id when its unique lock or the results list
--         needs it, else '' (the lock is released only if it holds it; with
--         a results cap, the id goes to the head of the results list)
--   track the index in KEYS of the job's status record, 0 for none; if not
--         0, its lifetime in ms, a count n, and n field-value pairs follow.
--         The record is written only with the outcome it tells.
-- Returns one flag per job: 1 recorded, 0 no longer in flight.
local done = {}
local processed, failed, retried, dead, recovered, listed = 0, 0, 0, 0, 0, 0
local results = tonumber(ARGV[2]) > 0
local function release(num, id)
  local k = tonumber(num)
  if k > 0 and redis.call('GET', KEYS[k]) == id then
    redis.call('DEL', KEYS[k])
  end
end
local function list(id)
  if results and id ~= '' then
    redis.call('LPUSH', KEYS[6], id)
    listed = listed + 1
  end
end
local i = 3
while i <= #ARGV do
  local op, item, data, num, id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local track, ttl, fields = tonumber(ARGV[i + 5]), nil, 0
  if track > 0 then ttl, fields = ARGV[i + 6], tonumber(ARGV[i + 7]) end
  local first = i + 8
  i = track > 0 and first + 2 * fields or i + 6
  -- The count as a string: Redis 7.0 turns a Lua number into one with
  -- printf, which was a few percent of Redis's time per job.
  if redis.call('LREM', KEYS[1], '1', item) == 0 then
    done[#done + 1] = 0
  else
    done[#done + 1] = 1
    if op == 'ok' then
      processed = processed + 1
      release(num, id)
      list(id)
    elseif op == 'retry' then
      redis.call('ZADD', KEYS[3], num, data)
      processed, failed, retried = processed + 1, failed + 1, retried + 1
    elseif op == 'dead' then
      redis.call('LPUSH', KEYS[4], data)
      processed, failed, dead = processed + 1, failed + 1, dead + 1
      release(num, id)
      list(id)
    elseif op == 'snooze' then
      redis.call('ZADD', KEYS[3], num, data)
    else -- requeue
      redis.call('LPUSH', KEYS[2], data ~= '' and data or item)
      if num == '1' then recovered = recovered + 1 end
    end
    if track > 0 then
      redis.call('HSET', KEYS[track], unpack(ARGV, first, first + 2 * fields - 1))
      redis.call('PEXPIRE', KEYS[track], ttl)
    end
  end
end
if dead > 0 then redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[1]) - 1) end
if listed > 0 then redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[2]) - 1) end
if processed > 0 then redis.call('HINCRBY', KEYS[5], 'processed', processed) end
if failed > 0 then redis.call('HINCRBY', KEYS[5], 'failed', failed) end
if retried > 0 then redis.call('HINCRBY', KEYS[5], 'retried', retried) end
if dead > 0 then redis.call('HINCRBY', KEYS[5], 'dead', dead) end
if recovered > 0 then redis.call('HINCRBY', KEYS[5], 'recovered', recovered) end
return done
