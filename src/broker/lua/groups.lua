-- groups: a queue's groups (DESIGN section 14) as `conveyor groups`, the
-- stats and the dashboard show them. Per group: its jobs waiting (sorted
-- into its list, to be taken in its turn), held (the same while the group
-- has as many jobs in flight as its limit allows), and in flight on the
-- nodes of {K}:nodes. One step, so the figures agree.
-- KEYS[1] the queue's groups by turn {K}:group:turns
-- KEYS[2] the queue's nodes {K}:nodes
-- ARGV[1] the groups' lists' common prefix {K}:group:jobs:
-- ARGV[2] the running counts' common prefix {K}:group:running:
-- ARGV[3] the most groups to list, busiest first (most jobs waiting or
--         held, then most in flight, then by name); 0 for the totals alone
-- ARGV[4] the most groups to look at: a bound on the work, whatever their
--         number (their turns' order decides which)
-- ARGV[5] the most jobs of one group in flight, 0 for no limit
-- ARGV[6] of how many groups, the first in their turns' order (those
--         holding jobs the longest), to read the head job's created_at
-- Returns {waiting, held, running, groups, n, created_at..., name, waiting,
-- held, running, ...}: the totals over the groups looked at, how many
-- groups hold or run jobs, the created_at of n groups' head jobs (an
-- envelope's, up to 64 KiB), then up to ARGV[3] groups.
local most, look, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local heads_most = tonumber(ARGV[6])
local running, queued, names, created = {}, {}, {}, {}
local heads_read = 0
local total_running = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local counts = redis.call('HGETALL', ARGV[2] .. node)
  for i = 1, #counts, 2 do
    local group, n = counts[i], tonumber(counts[i + 1])
    if n > 0 then
      if running[group] == nil then
        names[#names + 1] = group
      end
      running[group] = (running[group] or 0) + n
      total_running = total_running + n
    end
  end
end
local total_waiting, total_held = 0, 0
for _, group in ipairs(redis.call('ZRANGE', KEYS[1], 0, look - 1)) do
  local n = redis.call('LLEN', ARGV[1] .. group)
  if n > 0 and queued[group] == nil then
    queued[group] = n
    if heads_read < heads_most then
      heads_read = heads_read + 1
      -- A group's head is its oldest job: the oldest waiting is one of them.
      local item = redis.call('LINDEX', ARGV[1] .. group, 0)
      if item and #item <= 65536 and string.find(item, '"created_at"', 1, true) then
        local ok, job = pcall(cjson.decode, item)
        if ok and type(job) == 'table' and job.id ~= nil and job.payload ~= nil
          and job.attempt ~= nil and type(job.created_at) == 'string' then
          created[#created + 1] = job.created_at
        end
      end
    end
    if running[group] == nil then
      names[#names + 1] = group
    end
    if limit > 0 and (running[group] or 0) >= limit then
      total_held = total_held + n
    else
      total_waiting = total_waiting + n
    end
  end
end
local out = {total_waiting, total_held, total_running, #names, #created}
for _, at in ipairs(created) do
  out[#out + 1] = at
end
if most > 0 then
  table.sort(names, function(a, b)
    local qa, qb = queued[a] or 0, queued[b] or 0
    if qa ~= qb then return qa > qb end
    local ra, rb = running[a] or 0, running[b] or 0
    if ra ~= rb then return ra > rb end
    return a < b
  end)
  for i = 1, math.min(most, #names) do
    local group = names[i]
    local n, r = queued[group] or 0, running[group] or 0
    local held = limit > 0 and r >= limit
    out[#out + 1] = group
    out[#out + 1] = held and 0 or n
    out[#out + 1] = held and n or 0
    out[#out + 1] = r
  end
end
return out
