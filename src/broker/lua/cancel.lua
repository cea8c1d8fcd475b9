-- cancel: move a waiting or scheduled job to the dead letter list, if it is
-- still there, releasing its unique lock if it holds it.
-- KEYS[1] where it waits: the queue list K, or the scheduled set {K}:scheduled
-- KEYS[2] the queue's dead letter list {K}:dead
-- KEYS[3] its unique lock {K}:unique:<key>, or KEYS[2] again when it has none
-- KEYS[4] the ends of the queue's flow jobs {K}:flows:ended
-- ARGV[1] 'list' or 'zset': what KEYS[1] is
-- ARGV[2] the item as it waits
-- ARGV[3] the dead entry (the envelope with last_error "cancelled")
-- ARGV[4] the dead letter list's length cap
-- ARGV[5] the job's id, '' when it has no unique lock
-- ARGV[6] a flow node's end, pushed on KEYS[4] when it is moved; '' for a
--         job outside a flow
-- Returns 1 when the job was moved, 0 when it was no longer there.
local removed
if ARGV[1] == 'list' then
  removed = redis.call('LREM', KEYS[1], 1, ARGV[2])
else
  removed = redis.call('ZREM', KEYS[1], ARGV[2])
end
if removed == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
if ARGV[6] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[6]) end
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then
  redis.call('DEL', KEYS[3])
end
return 1
