-- shrink: read the first N items of a dead node's in-flight list for the
-- reaper, first replacing, in place, each item too large to read by its
-- stand-in (stand_in.lua), so that no such item crosses the wire. Only
-- daemons of earlier versions parked such items in flight; this daemon
-- parks stand-ins (take.lua). Runs after stand_in.lua.
-- KEYS[1] the in-flight list
-- ARGV[1] the most items to read
-- ARGV[2] the largest item handed out whole, in bytes (envelope.rs item_limit)
-- ARGV[3] how many first bytes a stand-in keeps (envelope.rs HEAD_BYTES)
-- ARGV[4] a new job id, for the first stand-in of an item that names none
-- Returns the items, oldest first; fewer than N when the list ends or a
-- second item too large without an id comes (it waits for the next call).
local limit, head_bytes, fresh_id = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local out, big = {}, false
for i = 0, tonumber(ARGV[1]) - 1 do
  local item = redis.call('LINDEX', KEYS[1], i)
  if not item then
    break
  end
  if #item > limit then
    big = true
    local small, used = stand_in(item, head_bytes, fresh_id)
    if not small then
      break
    end
    if used then fresh_id = nil end
    redis.call('LSET', KEYS[1], i, small)
    item = small
  end
  out[#out + 1] = item
end
if big then
  collectgarbage('collect')
end
return out
