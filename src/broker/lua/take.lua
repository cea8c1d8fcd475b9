-- take: move up to N waiting jobs into this node's in-flight list at once,
-- for a queue with a backlog (an empty queue is served by BLMOVE instead).
-- Three commands per batch, whatever its size.
-- A suspect (an envelope whose daemon died while running it: "deliveries"
-- above 0) is never taken together with other jobs, so that when it runs
-- alone and crashes its daemon again, only it is blamed.
-- KEYS[1] the queue list K
-- KEYS[2] this node's in-flight list {K}:inflight:<node>
-- ARGV[1] the most jobs to move (the caller's free worker slots, bounded)
-- Returns the moved items, oldest first; fewer than N when the queue ran
-- dry or a suspect came next; a suspect only ever alone.
local function suspect(item)
  if not string.find(item, '"deliveries":', 1, true) then
    return false
  end
  local ok, job = pcall(cjson.decode, item)
  return ok and type(job) == 'table' and job.id ~= nil and job.payload ~= nil
    and job.attempt ~= nil and (tonumber(job.deliveries) or 0) > 0
end

local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local n = #items
for i = 1, n do
  if suspect(items[i]) then
    n = (i == 1) and 1 or (i - 1)
    break
  end
end
if n == 0 then
  return items
end
for i = #items, n + 1, -1 do
  items[i] = nil
end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('RPUSH', KEYS[2], unpack(items))
return items
