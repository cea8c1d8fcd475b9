-- flow_release: pushes released nodes of one flow onto their queue, each
-- once however often the hand-off is done: a node already marked in the
-- flow's released marker of this queue is not pushed again.
-- KEYS[1] the queue list K
-- KEYS[2] the flow's marker in this queue {K}:flows:released:<fid>
-- ARGV[1] how long the marker lives (s)
-- ARGV[2..] pairs: the node's name, its job's envelope
-- Returns how many were pushed.
local pushed = 0
for i = 2, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], '1') == 1 then
    redis.call('RPUSH', KEYS[1], ARGV[i + 1])
    pushed = pushed + 1
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return pushed
