-- flow_release: pushes released nodes of one flow onto their queue, each
-- once however often the hand-off is done: a node already marked in the
-- flow's released marker of this queue is not pushed again.
-- KEYS[1] the queue list K
-- KEYS[2] the flow's marker in this queue {K}:flows:released:<fid>
-- ARGV[1] how long the marker lives (s)
-- ARGV[2..] pairs: the node's name, its job's envelope (at most 500 pairs,
--           each name once)
-- Returns how many were pushed.
local names = {}
for i = 2, #ARGV, 2 do names[#names + 1] = ARGV[i] end
if #names == 0 then return 0 end
local marked = redis.call('HMGET', KEYS[2], unpack(names))
local marks, jobs = {}, {}
for k, name in ipairs(names) do
  if not marked[k] then
    marks[#marks + 1] = name
    marks[#marks + 1] = '1'
    jobs[#jobs + 1] = ARGV[2 * k + 1]
  end
end
if #jobs > 0 then
  redis.call('HSET', KEYS[2], unpack(marks))
  redis.call('RPUSH', KEYS[1], unpack(jobs))
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return #jobs
