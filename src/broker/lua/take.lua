-- take: move up to N waiting jobs into this node's in-flight list at once.
-- Also the second half of a blocking fetch (queue.rs, `Fetcher`): after a
-- BLMOVE that only waited for the queue to fill, this takes the job.
-- Three commands per batch, whatever its size. Runs after stand_in.lua.
--
-- Items too large to read (over ARGV[2]) go to the in-flight list as their
-- stand-ins (stand_in.lua), in this same step: the item itself never
-- leaves Redis, and the daemon dead-letters the stand-in.
--
-- A suspect (an envelope whose daemon died while running it, to be run
-- alone) is never taken together with other jobs, so that when it runs
-- alone and crashes its daemon again, only it is blamed. This is the one
-- definition of a suspect: the daemon runs alone what this says is one.
-- A suspect is an item that names "deliveries" and decodes to an object
-- with id, payload and attempt whose deliveries is a number above 0.
--
-- KEYS[1] the queue list K
-- KEYS[2] this node's in-flight list {K}:inflight:<node>
-- ARGV[1] the most jobs to move (the caller's free places, bounded)
-- ARGV[2] the largest item handed out whole, in bytes (envelope.rs item_limit)
-- ARGV[3] how many first bytes a stand-in keeps (envelope.rs HEAD_BYTES)
-- ARGV[4] a new job id, for the first stand-in of an item that names none
-- Returns {suspect, item...}: the moved items, oldest first (stand-ins in
-- the place of items too large), and suspect 1 when the one item moved is a
-- suspect, else 0. Fewer than N items when the queue ran dry, a suspect
-- came next, or a second item too large without an id came (it waits for
-- the next call and its new id); a suspect only ever alone.
local function suspect(item)
  if not string.find(item, '"deliveries"', 1, true) then
    return false
  end
  local ok, job = pcall(cjson.decode, item)
  return ok and type(job) == 'table' and job.id ~= nil and job.payload ~= nil
    and job.attempt ~= nil and type(job.deliveries) == 'number' and job.deliveries > 0
end

local limit, head_bytes, fresh_id = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local n, alone, big = #items, 0, false
for i = 1, n do
  local item = items[i]
  if #item > limit then
    big = true
    local small, used = stand_in(item, head_bytes, fresh_id)
    if not small then
      n = i - 1
      break
    end
    if used then fresh_id = nil end
    items[i] = small
  elseif suspect(item) then
    if i == 1 then
      n, alone = 1, 1
    else
      n = i - 1
    end
    break
  end
end
local out = {alone}
for i = 1, n do
  out[i + 1] = items[i]
end
items = nil
if big then
  -- The copy of a large item is garbage now: freed at once, not later.
  collectgarbage('collect')
end
if n == 0 then
  return out
end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('RPUSH', KEYS[2], unpack(out, 2, n + 1))
return out
