-- dead_retry: move dead jobs back to the tail of their queue for a new round.
-- KEYS[1] the queue's dead letter list {K}:dead
-- KEYS[2] the queue list K
-- ARGV[1..] pairs: the dead entry exactly as stored, and the item to enqueue
-- Returns how many were moved; an entry already gone is skipped.
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
