-- remove_at: remove one item of a list or sorted set by its index, if it is
-- still the item the caller saw there (same size, same first bytes), and
-- push what takes its place, without the item ever crossing the wire: how
-- `conveyor dead purge`, `dead retry` and `cancel` act on an item too large
-- to send back whole.
-- KEYS[1] the list, or the sorted set (by rank)
-- KEYS[2] where the replacement goes (a list), or KEYS[1] again if none
-- KEYS[3] a unique lock {K}:unique:<key> to release, or KEYS[1] again
-- ARGV[1] 'list' or 'zset'
-- ARGV[2] the item's index
-- ARGV[3] its size in bytes
-- ARGV[4] its first bytes, as the caller saw them (at most the whole item)
-- ARGV[5] the replacement: '' for none; else LPUSHed on KEYS[2] ...
-- ARGV[6] ... 'head' to LPUSH it, 'tail' to RPUSH it; or 'move' to LPUSH
--         the item itself on KEYS[2] (ARGV[5] unused)
-- ARGV[7] KEYS[2]'s length cap after an LPUSH, 0 for none
-- ARGV[8] the job id that holds the lock in KEYS[3], '' for none
-- (A list item goes by LREM of its value: the first equal item, the same
-- bytes, whichever place it holds.)
-- Returns 1 when the item was removed, 0 when it was no longer there.
local index = tonumber(ARGV[2])
local item
if ARGV[1] == 'zset' then
  item = redis.call('ZRANGE', KEYS[1], index, index)[1]
else
  item = redis.call('LINDEX', KEYS[1], index)
end
if not item or #item ~= tonumber(ARGV[3]) or string.sub(item, 1, #ARGV[4]) ~= ARGV[4] then
  return 0
end
if ARGV[1] == 'zset' then
  redis.call('ZREM', KEYS[1], item)
else
  redis.call('LREM', KEYS[1], 1, item)
end
if ARGV[6] == 'move' then
  redis.call('LPUSH', KEYS[2], item)
end
if #item > 1048576 then
  item = nil
  collectgarbage('collect')
end
item = nil
if ARGV[5] ~= '' then
  if ARGV[6] == 'tail' then
    redis.call('RPUSH', KEYS[2], ARGV[5])
  else
    redis.call('LPUSH', KEYS[2], ARGV[5])
    if tonumber(ARGV[7]) > 0 then
      redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
    end
  end
end
if ARGV[8] ~= '' and redis.call('GET', KEYS[3]) == ARGV[8] then
  redis.call('DEL', KEYS[3])
end
return 1
