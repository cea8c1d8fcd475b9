-- view: read items of a list or a sorted set without carrying a large one
-- whole: an item up to ARGV[4] bytes comes whole, a larger one as its
-- first ARGV[5] bytes, each with its size. Items are read one at a time,
-- so a large one costs this script a copy, never the reply. (A copy costs
-- Redis about 5 ms per MB, measured on Redis 7.0: what an entry of 100 MB
-- left by an earlier version costs each read that passes it.)
-- KEYS[1] the list, or the sorted set (by rank, lowest score first)
-- ARGV[1] 'list' or 'zset'
-- ARGV[2] the first index (0 for the head)
-- ARGV[3] the most items
-- ARGV[4] the largest item returned whole, in bytes
-- ARGV[5] how many first bytes of a larger item are returned
-- ARGV[6] a byte budget: no item is read after the items read reach it
--         (at least one is read)
-- ARGV[7] '' or a prefix: no item is read after one that begins with it
--         (the item looked for, `{"id":"<id>"`)
-- Returns three values per item: its size, its bytes (whole or first),
-- and its score ('' in a list). Fewer items than asked when the list ends,
-- the budget is spent, the prefix was found, or after an item larger than
-- ARGV[4] (one such copy per call keeps each call short).
local zset = ARGV[1] == 'zset'
local first, most = tonumber(ARGV[2]), tonumber(ARGV[3])
local whole, head, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local prefix = ARGV[7] or ''
local out, spent, big = {}, 0, false
for i = first, first + most - 1 do
  local item, score
  if zset then
    local found = redis.call('ZRANGE', KEYS[1], i, i, 'WITHSCORES')
    item, score = found[1], found[2]
  else
    item, score = redis.call('LINDEX', KEYS[1], i), ''
  end
  if not item then
    break
  end
  local size = #item
  local cut = size > whole
  if cut then
    item = string.sub(item, 1, head)
    big = big or size > 1048576
  end
  out[#out + 1] = size
  out[#out + 1] = item
  out[#out + 1] = score
  spent = spent + #item
  if spent >= budget or cut or (prefix ~= '' and string.sub(item, 1, #prefix) == prefix) then
    break
  end
end
if big then
  collectgarbage('collect')
end
return out
