-- recover: return the in-flight jobs of a dead node (or this node's own
-- leftovers) to the head of their queue, or dead-letter the ones that have
-- now crashed too many daemons.
-- KEYS[1] the in-flight list holding them
-- KEYS[2] the queue list K
-- KEYS[3] the queue's dead letter list {K}:dead
-- KEYS[4] the queue's stats hash {K}:stats
-- ARGV[1] the dead list's length cap
-- ARGV[2..] triples: the item as it sits in the in-flight list, 'queue' or
--           'dead', and what to push in its place (deliveries counted).
--           The caller lists them newest first, so that pushing each to the
--           head restores their original order there.
-- Returns one code per triple: 1 requeued, 2 dead-lettered, 0 already gone
-- (another reaper took it, or its outcome was recorded meanwhile).
local codes, requeued, dead = {}, 0, 0
for i = 2, #ARGV, 3 do
  local code = 0
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    if ARGV[i + 1] == 'dead' then
      redis.call('LPUSH', KEYS[3], ARGV[i + 2])
      dead = dead + 1
      code = 2
    else
      redis.call('LPUSH', KEYS[2], ARGV[i + 2])
      requeued = requeued + 1
      code = 1
    end
  end
  codes[#codes + 1] = code
end
if dead > 0 then
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[1]) - 1)
  redis.call('HINCRBY', KEYS[4], 'dead', dead)
  redis.call('HINCRBY', KEYS[4], 'failed', dead)
end
if requeued > 0 then
  redis.call('HINCRBY', KEYS[4], 'recovered', requeued)
end
return codes
