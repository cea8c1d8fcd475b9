-- take: move up to N waiting jobs into this node's in-flight list at once,
-- for a queue with a backlog (an empty queue is served by BLMOVE instead).
-- KEYS[1] the queue list K
-- KEYS[2] this node's in-flight list {K}:inflight:<node>
-- ARGV[1] the most jobs to move (the caller's free worker slots, bounded)
-- Returns the moved items, oldest first; fewer than N when the queue ran dry.
local moved = {}
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not item then break end
  moved[i] = item
end
return moved
