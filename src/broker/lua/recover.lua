-- recover: return the in-flight jobs of a dead node (or this node's own
-- leftovers) to the head of their queue, or dead-letter the ones that have
-- now crashed too many daemons. A queue with groups counts each job out of
-- its group's jobs in flight on that node (see take.lua); a job of an
-- ordered group, also at the head of its group's list, is replaced there
-- (or removed there when it goes dead) instead of pushed to the queue.
-- KEYS[1] the in-flight list holding them
-- KEYS[2] the queue list K
-- KEYS[3] the queue's dead letter list {K}:dead
-- KEYS[4] the queue's stats hash {K}:stats
-- KEYS[5] the queue's results list {K}:results
-- KEYS[6] that node's running counts {K}:group:running:<node>
-- KEYS[7] the queue's groups by turn {K}:group:turns
-- KEYS[8] the ends of the queue's flow jobs {K}:flows:ended
-- KEYS[9..] status records conveyor:job:<id> that jobs name by index
-- ARGV[1] the dead list's length cap
-- ARGV[2] the results list's length cap
-- ARGV[3] the payload's field that names a job's group; '' for no groups
-- ARGV[4] ordered groups: their lists' common prefix {K}:group:jobs:; else ''
-- ARGV[5..] a count f and f pairs: a job's place in the call (1 for the
--           first) and its flow node's end, pushed on KEYS[8] if it goes
--           dead here; then per job: the item as it sits in the in-flight list, 'queue' or
--           'dead', what to push in its place (deliveries counted), the id
--           to list in the results if it goes dead ('' for none: its queue
--           does not track jobs), and the index in KEYS of its status
--           record (0 for none), followed if not 0 by the record's lifetime
--           in ms, a count n and n field-value pairs. The caller lists them
--           newest first, so that pushing each to the head restores their
--           original order there.
-- Returns one code per job: 1 requeued, 2 dead-lettered, 0 already gone
-- (another reaper took it, or its outcome was recorded meanwhile).
local codes, requeued, dead, listed = {}, 0, 0, 0
local field, ordered = ARGV[3], ARGV[4]
local flows_given = tonumber(ARGV[5])
-- job's place -> its flow node's end
local flow_ends = {}
for p = 6, 5 + 2 * flows_given, 2 do
  flow_ends[tonumber(ARGV[p])] = ARGV[p + 1]
end
local i = 6 + 2 * flows_given
local place = 0
while i <= #ARGV do
  place = place + 1
  local item, to, replacement, id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local track, ttl, fields = tonumber(ARGV[i + 4]), nil, 0
  if track > 0 then ttl, fields = ARGV[i + 5], tonumber(ARGV[i + 6]) end
  local first = i + 7
  i = track > 0 and first + 2 * fields or i + 5
  local code = 0
  if redis.call('LREM', KEYS[1], 1, item) == 1 then
    local kept = nil
    if field ~= '' then
      local group = group_of(item, field)
      if redis.call('HINCRBY', KEYS[6], group, -1) <= 0 then
        redis.call('HDEL', KEYS[6], group)
      end
      if ordered ~= '' then
        kept = ordered .. group
        local by = to ~= 'dead' and replacement or nil
        if redis.call('LINDEX', kept, 0) == item then
          if by then
            redis.call('LSET', kept, 0, by)
          else
            redis.call('LPOP', kept)
          end
        elseif redis.call('LREM', kept, 1, item) == 1 and by then
          redis.call('LPUSH', kept, by)
        elseif by then
          -- Not in its list (an earlier version's job): back to the queue.
          kept = nil
        end
        if kept and by and redis.call('ZSCORE', KEYS[7], group) == false then
          local last = redis.call('ZRANGE', KEYS[7], -1, -1, 'WITHSCORES')
          redis.call('ZADD', KEYS[7], tonumber(last[2] or 0) + 1, group)
        end
      end
    end
    if to == 'dead' then
      redis.call('LPUSH', KEYS[3], replacement)
      if flow_ends[place] then redis.call('RPUSH', KEYS[8], flow_ends[place]) end
      dead = dead + 1
      code = 2
      if id ~= '' then
        redis.call('LPUSH', KEYS[5], id)
        listed = listed + 1
      end
    else
      if not kept then
        redis.call('LPUSH', KEYS[2], replacement)
      end
      requeued = requeued + 1
      code = 1
    end
    if track > 0 then
      redis.call('HSET', KEYS[track], unpack(ARGV, first, first + 2 * fields - 1))
      redis.call('PEXPIRE', KEYS[track], ttl)
    end
  end
  codes[#codes + 1] = code
end
if dead > 0 then
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[1]) - 1)
  redis.call('HINCRBY', KEYS[4], 'dead', dead)
  redis.call('HINCRBY', KEYS[4], 'failed', dead)
end
if listed > 0 then
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[2]) - 1)
end
if requeued > 0 then
  redis.call('HINCRBY', KEYS[4], 'recovered', requeued)
end
return codes
