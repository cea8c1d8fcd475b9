-- finish: record the outcomes of many jobs of one queue at once. Each job
-- leaves the in-flight list in the same step that records its outcome, so a
-- job is never both finished and in flight; one whose item is no longer in
-- the list (a reaper gave it to another node) is skipped, and nothing is
-- recorded for it. The queue's history counts the jobs recorded here, in
-- the same step (history.rs). A queue with groups counts each job out of
-- its group's jobs in flight on this node (see take.lua). A job of an
-- ordered group is also at the head of its group's list: an end (ok,
-- dead) removes it there, a retry or snooze replaces it there (due at its
-- time in KEYS[10], not in the scheduled set), a requeue leaves it there.
-- KEYS[1] the in-flight list holding the jobs
-- KEYS[2] the queue list K
-- KEYS[3] the queue's scheduled set {K}:scheduled
-- KEYS[4] the queue's dead letter list {K}:dead
-- KEYS[5] the queue's stats hash {K}:stats
-- KEYS[6] the queue's results list {K}:results
-- KEYS[7] the history's string of this hour {K}:history:m:<hour>
-- KEYS[8] the history's string of this day {K}:history:d:<day>
-- KEYS[9] this node's running counts {K}:group:running:<node>
-- KEYS[10] the ordered groups' retry times {K}:group:due
-- KEYS[11] the queue's groups by turn {K}:group:turns
-- KEYS[12] the ends of the queue's flow jobs {K}:flows:ended
-- KEYS[13..] unique locks {K}:unique:<key> and status records
--           conveyor:job:<id> that entries name by index
-- ARGV[1] the dead list's length cap
-- ARGV[2] the results list's length cap; 0 when no job here is tracked
--         (then the list is not touched)
-- ARGV[3] the index of this minute's first counter in KEYS[7]; -1 to keep
--         no history (then KEYS[7] and KEYS[8] are not touched)
-- ARGV[4] the index of the last counter of KEYS[7]: the string is made
--         whole when the hour begins, as a string grown by steps takes
--         twice the memory
-- ARGV[5] when KEYS[7] expires, ARGV[6] when KEYS[8] expires (s)
-- ARGV[7] the payload's field that names a job's group; '' for no groups
-- ARGV[8] ordered groups: their lists' common prefix {K}:group:jobs:; else ''
-- ARGV[9..] a count k, then k pairs: a history counter's index and what
--         the call's jobs add to it, as if every one were recorded (a job
--         found no longer in flight takes its part back, so a recorded job
--         costs the script nothing more for the history); then a count
--         f and f pairs: a job's place in the call (1 for the first) and
--         its flow node's end, pushed on KEYS[12] if the job's end (ok,
--         dead) is recorded; then seven values per job, and the status
--         record's after them:
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
--   hist  ok, retry, dead: the history counters of its waiting and run
--         times, wait + 64 * run (0 for none), counted in ARGV[9..]
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
local base = tonumber(ARGV[3])
-- counter index -> increment, for the history
local counts = nil
local pairs_given = tonumber(ARGV[9])
if base >= 0 then
  counts = {}
  for p = 10, 9 + 2 * pairs_given, 2 do
    counts[tonumber(ARGV[p])] = tonumber(ARGV[p + 1])
  end
end
-- Takes back what a job not recorded here added to the history.
local function uncount(op, hist)
  if counts and (op == 'ok' or op == 'retry' or op == 'dead') then
    local function less(field) counts[field] = counts[field] - 1 end
    less(op == 'ok' and 0 or 1)
    if op == 'dead' then less(2) end
    local h = tonumber(hist)
    local wait, run = h % 64, math.floor(h / 64)
    if wait > 0 then less(wait) end
    if run > 0 then less(run) end
  end
end
local function list(id)
  if results and id ~= '' then
    redis.call('LPUSH', KEYS[6], id)
    listed = listed + 1
  end
end
local field, ordered = ARGV[7], ARGV[8]
-- group -> how many of its jobs left the in-flight list here
local ended = field ~= '' and {} or nil
-- The head of an ordered group's list, where its job in flight also is:
-- replaced by `by` (nil: removed); found elsewhere in the list, replaced
-- at the head. Whether `by` went there: a job no longer in the list (an
-- earlier version's) goes on as in a queue without groups.
local function at_head(group, item, by)
  local list = ordered .. group
  if redis.call('LINDEX', list, 0) == item then
    if by then
      redis.call('LSET', list, 0, by)
    else
      redis.call('LPOP', list)
    end
  elseif redis.call('LREM', list, 1, item) == 0 then
    return false
  elseif by then
    redis.call('LPUSH', list, by)
  end
  if by and redis.call('ZSCORE', KEYS[11], group) == false then
    local last = redis.call('ZRANGE', KEYS[11], -1, -1, 'WITHSCORES')
    redis.call('ZADD', KEYS[11], tonumber(last[2] or 0) + 1, group)
  end
  return true
end
local at = 10 + 2 * pairs_given
local flows_given = tonumber(ARGV[at])
-- job's place -> its flow node's end
local flow_ends = nil
if flows_given > 0 then
  flow_ends = {}
  for p = at + 1, at + 2 * flows_given, 2 do
    flow_ends[tonumber(ARGV[p])] = ARGV[p + 1]
  end
end
local i = at + 1 + 2 * flows_given
while i <= #ARGV do
  local op, item, data, num, id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local hist = ARGV[i + 5]
  local track, ttl, fields = tonumber(ARGV[i + 6]), nil, 0
  if track > 0 then ttl, fields = ARGV[i + 7], tonumber(ARGV[i + 8]) end
  local first = i + 9
  i = track > 0 and first + 2 * fields or i + 7
  -- The count as a string: Redis 7.0 turns a Lua number into one with
  -- printf, which was a few percent of Redis's time per job.
  if redis.call('LREM', KEYS[1], '1', item) == 0 then
    done[#done + 1] = 0
    uncount(op, hist)
  else
    done[#done + 1] = 1
    local group = nil
    if ended then
      group = group_of(item, field)
      ended[group] = (ended[group] or 0) + 1
    end
    local kept = group and ordered ~= ''
    if flow_ends and flow_ends[#done] and (op == 'ok' or op == 'dead') then
      redis.call('RPUSH', KEYS[12], flow_ends[#done])
    end
    if op == 'ok' then
      processed = processed + 1
      release(num, id)
      list(id)
      if kept then at_head(group, item, nil) end
    elseif op == 'retry' or op == 'snooze' then
      if kept and at_head(group, item, data) then
        redis.call('HSET', KEYS[10], group, num)
      else
        redis.call('ZADD', KEYS[3], num, data)
      end
      if op == 'retry' then
        processed, failed, retried = processed + 1, failed + 1, retried + 1
      end
    elseif op == 'dead' then
      redis.call('LPUSH', KEYS[4], data)
      processed, failed, dead = processed + 1, failed + 1, dead + 1
      release(num, id)
      list(id)
      if kept then at_head(group, item, nil) end
    else -- requeue
      if not (kept and at_head(group, item, data ~= '' and data or item)) then
        redis.call('LPUSH', KEYS[2], data ~= '' and data or item)
      end
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
if ended then
  -- One read, and one write of the counts left and one of those ended.
  local names = {}
  for group in pairs(ended) do
    names[#names + 1] = group
  end
  if #names > 0 then
    local had = redis.call('HMGET', KEYS[9], unpack(names))
    local left, gone = {}, {}
    for i, group in ipairs(names) do
      local n = (tonumber(had[i]) or 0) - ended[group]
      if n > 0 then
        left[#left + 1] = group
        left[#left + 1] = n
      else
        gone[#gone + 1] = group
      end
    end
    if #left > 0 then redis.call('HSET', KEYS[9], unpack(left)) end
    if #gone > 0 then redis.call('HDEL', KEYS[9], unpack(gone)) end
  end
end
if counts then
  -- One BITFIELD per string. A minute's first count sets the strings'
  -- lifetimes (its every counter then equals its increment).
  local minute, day = {'OVERFLOW', 'SAT'}, {'OVERFLOW', 'SAT'}
  local first, at = nil, 2
  for field, n in pairs(counts) do
    if n > 0 then
      first = first or n
      local by = tostring(n)
      minute[at + 1], minute[at + 2], minute[at + 3], minute[at + 4] =
        'INCRBY', 'u32', '#' .. (base + field), by
      day[at + 1], day[at + 2], day[at + 3], day[at + 4] = 'INCRBY', 'u32', '#' .. field, by
      at = at + 4
    end
  end
  minute[at + 1], minute[at + 2], minute[at + 3], minute[at + 4] = 'INCRBY', 'u32', '#' .. ARGV[4], 0
  -- Called so that a refusal (an ACL user of an earlier version's line,
  -- without BITFIELD) costs the history only, never the outcomes above;
  -- `conveyor check` names the command refused.
  local function count_into(key, ops, expire_at)
    local counted = redis.pcall('BITFIELD', key, unpack(ops))
    if type(counted) == 'table' and counted[1] == first then
      redis.pcall('EXPIREAT', key, expire_at)
    end
  end
  if first then
    count_into(KEYS[7], minute, ARGV[5])
    count_into(KEYS[8], day, ARGV[6])
  end
end
return done
