-- shrink: read the first N items of a dead node's in-flight list for the
-- reaper, first replacing each item too large to read by its stand-in
-- (stand_in.lua), so that no such item crosses the wire. Only daemons of
-- earlier versions parked such items in flight; this daemon parks
-- stand-ins (take.lua). A stand-in goes to the tail of the list (LREM and
-- RPUSH, the commands the daemon's Redis user has), where this call or the
-- next reads it. Runs after stand_in.lua.
-- KEYS[1] the in-flight list
-- ARGV[1] the most items to read
-- ARGV[2] the largest item handed out whole, in bytes (envelope.rs item_limit)
-- ARGV[3] how many first bytes a stand-in keeps (envelope.rs HEAD_BYTES)
-- ARGV[4] a new job id, for the first stand-in of an item that names none
-- Returns the items, oldest first; fewer than N when the list ends or a
-- second item too large without an id comes (it waits for the next call).
local most, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local head_bytes, fresh_id = tonumber(ARGV[3]), ARGV[4]
local out, big, i = {}, false, 0
while #out < most do
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
    redis.call('LREM', KEYS[1], 1, item)
    redis.call('RPUSH', KEYS[1], small)
  else
    out[#out + 1] = item
    i = i + 1
  end
end
if big then
  collectgarbage('collect')
end
return out
