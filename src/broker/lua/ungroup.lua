-- ungroup: a queue that no longer has `group` puts the jobs its groups
-- hold back at the head of its list, in their groups' turns and their
-- order within each group, ahead of the jobs that came after them.
-- Works from the end (the last group's last jobs first), so that calls
-- that each move a part leave the same order as one that moved it all.
-- KEYS[1] the queue list K
-- KEYS[2] the queue's groups by turn {K}:group:turns
-- KEYS[3] the ordered groups' retry times {K}:group:due and
-- KEYS[4] the turn of the group served last {K}:group:next, dropped at the end
-- ARGV[1] the groups' lists' common prefix {K}:group:jobs:
-- ARGV[2] the most jobs to move in this call
-- Returns {moved, groups left}: call again while groups are left.
local left, moved = tonumber(ARGV[2]), 0
while left > 0 do
  local group = redis.call('ZRANGE', KEYS[2], -1, -1)[1]
  if not group then
    break
  end
  local list = ARGV[1] .. group
  local jobs = redis.call('LRANGE', list, -left, -1)
  for i = #jobs, 1, -1 do
    redis.call('LPUSH', KEYS[1], jobs[i])
  end
  moved, left = moved + #jobs, left - #jobs
  if redis.call('LLEN', list) <= #jobs then
    redis.call('DEL', list)
    redis.call('ZREM', KEYS[2], group)
  else
    redis.call('LTRIM', list, 0, -#jobs - 1)
  end
end
local left_groups = redis.call('ZCARD', KEYS[2])
if left_groups == 0 then
  redis.call('DEL', KEYS[3], KEYS[4])
end
return {moved, left_groups}
