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
-- A queue with a global `limit` counts its jobs in flight on every node
-- (the in-flight lists of the nodes in {K}:nodes: jobs, not increments, so
-- a dead node's share comes back when its jobs are recovered) and moves no
-- more than the limit leaves.
--
-- A queue with `debounce` (ARGV[13] names the payload's field) first
-- moves up to SORT_MOST of its waiting jobs out of K: a job with the field
-- joins its value's burst (a hash {K}:group:burst:<value>, due in
-- {K}:group:bursts at its last arrival plus the window, but no later than
-- its first plus the longest wait), a job without it goes to the ready
-- list {K}:group:ready; then the bursts that are due go there too, each
-- as one job (the first arrival's, the last's, or for 'all' a raw payload
-- that is the JSON array of every arrival's payload). The take then reads
-- the ready list where it would read K. An arrival's time is when a take
-- moves it; a burst that is due waits for a take (every 50 ms while bursts
-- are pending: the verdict says 2).
--
-- A queue with `group` (ARGV[7] names the payload's field) first sorts up
-- to SORT_MOST of its waiting jobs into their groups' lists (group_of.lua),
-- then takes from the groups in turn, one job per turn: the group with the
-- lowest score in {K}:group:turns, which goes to the end of the turns after it.
-- A group with a limit (ARGV[8]) that has as many jobs in flight on the
-- nodes of {K}:nodes as its limit is passed over, and keeps its place. A
-- node counts its groups' jobs in flight in its {K}:group:running:<node>
-- hash, which finish.lua and recover.lua count down as the jobs leave its
-- in-flight list, and which is emptied whenever that list is empty: a
-- count cannot outlive the jobs it counts.
--
-- An ordered group (ARGV[11]) runs one job at a time, in push order: its
-- job in flight stays at the head of its list as well, until its outcome
-- (finish.lua) or its recovery (recover.lua) removes or replaces it there;
-- a job waiting for its retry waits at the head too, its group passed over
-- until the time {K}:group:due says.
--
-- KEYS[1] the queue list K
-- KEYS[2] this node's in-flight list {K}:inflight:<node>
-- KEYS[3] the queue's nodes {K}:nodes
-- KEYS[4] the queue's groups by turn {K}:group:turns
-- KEYS[5] this node's running counts {K}:group:running:<node>
-- KEYS[6] the ordered groups' retry times {K}:group:due
-- KEYS[7] the queue's bursts by due time {K}:group:bursts
-- KEYS[8] the queue's jobs ready to take {K}:group:ready
-- ARGV[1] the most jobs to move (the caller's free places, bounded)
-- ARGV[2] the largest item handed out whole, in bytes (envelope.rs item_limit)
-- ARGV[3] how many first bytes a stand-in keeps (envelope.rs HEAD_BYTES)
-- ARGV[4] a new job id, for the first stand-in of an item that names none
-- ARGV[5] the queue's global limit, 0 for none
-- ARGV[6] the in-flight lists' common prefix {K}:inflight:
-- ARGV[7] the payload's field that names a job's group; '' for no groups
-- ARGV[8] the most jobs of one group in flight at once, 0 for no limit
-- ARGV[9] the groups' lists' common prefix {K}:group:jobs:
-- ARGV[10] the running counts' common prefix {K}:group:running:
-- ARGV[11] '1' when the groups are ordered (ARGV[8] is then 1), else '0'
-- ARGV[12] now, in ms since the epoch (for the ordered groups' retries
--          and the bursts)
-- ARGV[13] the payload's field that names a job's burst; '' for no debounce
-- ARGV[14] a burst's window, ARGV[15] its longest wait (ms)
-- ARGV[16] which job a burst runs as: 'first', 'last' or 'all'
-- ARGV[17] the bursts' hashes' common prefix {K}:group:burst:
-- ARGV[18] the bursts' arrivals' lists' common prefix {K}:group:burst-all:
-- Returns {verdict, item...}: the moved items, oldest first (stand-ins in
-- the place of items too large), and verdict 1 when the one item moved is a
-- suspect, 2 when the limit left room for fewer than N while jobs wait
-- (with groups: when fewer than N moved while jobs are held in groups;
-- with debounce: while bursts are pending), else 0; plus 4 when ids of
-- arrivals that joined a burst follow the items, then their count. Fewer than N items when the queue ran dry, the limit was reached,
-- a suspect came next, or a second item too large without an id came (it
-- waits for the next call and its new id); a suspect only ever alone.
local function suspect(item)
  if not string.find(item, '"deliveries"', 1, true) then
    return false
  end
  local ok, job = pcall(cjson.decode, item)
  return ok and type(job) == 'table' and job.id ~= nil and job.payload ~= nil
    and job.attempt ~= nil and type(job.deliveries) == 'number' and job.deliveries > 0
end

-- The most waiting jobs one call sorts into groups: about 10 ms of Redis
-- for small jobs, so that a flood of one group is sorted, and the groups
-- behind it are served, within a few calls.
local SORT_MOST = 10000
-- The most groups one call looks at in their turns' order.
local PASS_MOST = 1000
-- The most jobs one RPUSH of the sort carries (Lua's stack bounds unpack).
local PUSH_MOST = 1000
-- The most bursts one call releases.
local DUE_MOST = 1000

local limit, head_bytes, fresh_id = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local most, global = tonumber(ARGV[1]), tonumber(ARGV[5])
local field = ARGV[7]
local limited = false
local now = tonumber(ARGV[12])

-- Where the jobs to take are: K, or the ready list of a debounced queue.
local source = KEYS[1]

-- A payload's JSON text: a raw item's own, an envelope's payload encoded.
local function payload_of(item)
  local ok, job = pcall(cjson.decode, item)
  if ok and type(job) == 'table' and job.id ~= nil and job.payload ~= nil
    and job.attempt ~= nil then
    return cjson.encode(job.payload)
  end
  return item
end

local function pushed(list, items)
  for from = 1, #items, PUSH_MOST do
    redis.call('RPUSH', list, unpack(items, from, math.min(from + PUSH_MOST - 1, #items)))
  end
end

-- The ids of the arrivals that joined a burst ('' for a raw payload).
local merged = {}
local function with_merged(out)
  if #merged > 0 then
    out[1] = out[1] + 4
    for _, id in ipairs(merged) do
      out[#out + 1] = id
    end
    out[#out + 1] = #merged
  end
  return out
end

local function debounce()
  local key, window, max_wait, keep = ARGV[13], tonumber(ARGV[14]), tonumber(ARGV[15]), ARGV[16]
  local arrivals = redis.call('LRANGE', KEYS[1], 0, SORT_MOST - 1)
  if #arrivals > 0 then
    redis.call('LTRIM', KEYS[1], #arrivals, -1)
    local pass = {}
    for i = 1, #arrivals do
      local item = arrivals[i]
      local value = #item > limit and '' or group_of(item, key)
      if value == '' then
        pass[#pass + 1] = item
      else
        local burst = ARGV[17] .. value
        local first = tonumber(redis.call('HGET', burst, 'first') or -1)
        if first < 0 then
          first = now
          redis.call('HSET', burst, 'first', now, 'last', now, 'n', 1, 'item', item)
        else
          merged[#merged + 1] = string.match(item, '^%s*{%s*"id"%s*:%s*"([^"\\]*)"') or ''
          redis.call('HSET', burst, 'last', now)
          redis.call('HINCRBY', burst, 'n', 1)
          if keep == 'last' then
            redis.call('HSET', burst, 'item', item)
          end
        end
        if keep == 'all' then
          redis.call('RPUSH', ARGV[18] .. value, item)
        end
        redis.call('ZADD', KEYS[7], math.min(now + window, first + max_wait), value)
      end
    end
    arrivals = nil
    pushed(KEYS[8], pass)
  end
  local due = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, DUE_MOST)
  local jobs = {}
  for _, value in ipairs(due) do
    local burst = ARGV[17] .. value
    if keep == 'all' then
      local all = ARGV[18] .. value
      local payloads = {}
      for _, item in ipairs(redis.call('LRANGE', all, 0, -1)) do
        payloads[#payloads + 1] = payload_of(item)
      end
      redis.call('DEL', all)
      if #payloads > 0 then
        jobs[#jobs + 1] = '[' .. table.concat(payloads, ',') .. ']'
      end
    else
      local item = redis.call('HGET', burst, 'item')
      if item then
        jobs[#jobs + 1] = item
      end
    end
    redis.call('DEL', burst)
    redis.call('ZREM', KEYS[7], value)
  end
  pushed(KEYS[8], jobs)
  source = KEYS[8]
end

if ARGV[13] ~= '' then
  debounce()
end

if global > 0 then
  local running = 0
  for _, node in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    running = running + redis.call('LLEN', ARGV[6] .. node)
  end
  if global - running < most then
    most = math.max(global - running, 0)
    limited = redis.call('LLEN', source) > most
      or (field ~= '' and redis.call('EXISTS', KEYS[4]) == 1)
      or redis.call('EXISTS', KEYS[7]) == 1
  end
  if most == 0 then
    return with_merged({limited and 2 or 0})
  end
end


local function take_grouped()
  local groups, prefix, per_group = KEYS[4], ARGV[9], tonumber(ARGV[8])
  local ordered = ARGV[11] == '1'
  if redis.call('LLEN', KEYS[2]) == 0 then
    redis.call('DEL', KEYS[5])
  end
  local last = redis.call('ZRANGE', groups, -1, -1, 'WITHSCORES')
  local turn = tonumber(last[2] or 0)

  -- Sort: one RPUSH per group (of up to PUSH_MOST jobs) per call, a new
  -- group's turn after every other's.
  local waiting = redis.call('LRANGE', source, 0, SORT_MOST - 1)
  if #waiting > 0 then
    local sorted, found = {}, {}
    for i = 1, #waiting do
      local item = waiting[i]
      -- An item too large to read is in the group '', as its stand-in is.
      local group = #item > limit and '' or group_of(item, field)
      local jobs = sorted[group]
      if not jobs then
        jobs = {}
        sorted[group] = jobs
        found[#found + 1] = group
      end
      jobs[#jobs + 1] = item
    end
    redis.call('LTRIM', source, #waiting, -1)
    waiting = nil
    for _, group in ipairs(found) do
      local jobs, list = sorted[group], prefix .. group
      local size = 0
      for from = 1, #jobs, PUSH_MOST do
        size = redis.call('RPUSH', list, unpack(jobs, from, math.min(from + PUSH_MOST - 1, #jobs)))
      end
      if size == #jobs then
        turn = turn + 1
        redis.call('ZADD', groups, 'NX', turn, group)
      end
    end
    sorted = nil
  end

  -- Jobs of each group in flight on every node, read a page of groups at
  -- a time (one HMGET a node), counted up as this call takes.
  local counted, nodes = {}, nil
  local function count(page)
    if per_group == 0 then
      return
    end
    if not nodes then
      -- This node's counts, whether or not it is listed yet, and the others'.
      nodes = {KEYS[5]}
      for _, node in ipairs(redis.call('SMEMBERS', KEYS[3])) do
        local key = ARGV[10] .. node
        if key ~= KEYS[5] then
          nodes[#nodes + 1] = key
        end
      end
    end
    for _, group in ipairs(page) do
      counted[group] = counted[group] or 0
    end
    for _, key in ipairs(nodes) do
      local found = redis.call('HMGET', key, unpack(page))
      for i, group in ipairs(page) do
        counted[group] = counted[group] + (tonumber(found[i]) or 0)
      end
    end
  end

  local out, n, alone, big, stop, removed = {0}, 0, 0, false, false, 0
  local took, served = {}, {}
  -- One job of `group` if it has room: whether it may give another.
  local function serve(group)
    if (per_group > 0 and counted[group] >= per_group) then
      return false
    end
    local due = 0
    if ordered then
      due = tonumber(redis.call('HGET', KEYS[6], group) or 0)
      if due > now then
        return false
      end
    end
    local list = prefix .. group
    -- An ordered group's job stays at the head; another's is taken off
    -- it, and put back if it must wait.
    local item
    if ordered then
      item = redis.call('LINDEX', list, 0)
    else
      item = redis.call('LPOP', list)
    end
    if not item then
      -- Emptied (by a cancel): its turn goes.
      redis.call('ZREM', groups, group)
      removed = removed + 1
      return false
    end
    if #item > limit then
      local small, used = stand_in(item, head_bytes, fresh_id)
      if not small then
        if not ordered then redis.call('LPUSH', list, item) end
        stop = true
        return false
      end
      if used then fresh_id = nil end
      item, big = small, true
      -- Dead-lettered as its stand-in: not kept at the head.
      if ordered then redis.call('LPOP', list) end
    else
      if suspect(item) then
        if n > 0 then
          if not ordered then redis.call('LPUSH', list, item) end
          stop = true
          return false
        end
        alone = 1
        stop = true
      end
      if ordered and due > 0 then
        redis.call('HDEL', KEYS[6], group)
      end
    end
    n = n + 1
    out[n + 1] = item
    if not took[group] then
      took[group] = 0
      served[#served + 1] = group
    end
    took[group] = took[group] + 1
    if per_group > 0 then
      counted[group] = counted[group] + 1
    end
    return not ordered
  end

  -- The first round in turn order, a page of groups at a time; then
  -- rounds over the groups served that may give more, in the same order.
  -- A group passed over (at its limit, or waiting for a retry) keeps its
  -- place in the turns; a group served goes to the end, in the order
  -- served.
  local at, again = 0, {}
  while n < most and not stop and at < PASS_MOST do
    local page = redis.call('ZRANGE', groups, at, at + most - n - 1)
    if #page == 0 then
      break
    end
    count(page)
    for _, group in ipairs(page) do
      if n >= most or stop then
        break
      end
      if serve(group) then
        again[#again + 1] = group
      end
    end
    -- The groups removed from this page moved the next ones up.
    at, removed = at + #page - removed, 0
  end
  while n < most and not stop and #again > 0 do
    local next_round = {}
    for _, group in ipairs(again) do
      if n >= most or stop then
        break
      end
      if serve(group) then
        next_round[#next_round + 1] = group
      end
    end
    again = next_round
  end
  if #served > 0 then
    local turns, bumps = {}, {}
    for _, group in ipairs(served) do
      if ordered or redis.call('LLEN', prefix .. group) > 0 then
        turn = turn + 1
        turns[#turns + 1] = turn
        turns[#turns + 1] = group
      else
        redis.call('ZREM', groups, group)
      end
      bumps[#bumps + 1] = group
      bumps[#bumps + 1] = took[group]
    end
    if #turns > 0 then
      redis.call('ZADD', groups, unpack(turns))
    end
    -- This node's counts: one read and one write.
    local had = redis.call('HMGET', KEYS[5], unpack(served))
    for i = 2, #bumps, 2 do
      bumps[i] = bumps[i] + (tonumber(had[i / 2]) or 0)
    end
    redis.call('HSET', KEYS[5], unpack(bumps))
  end
  if big then
    collectgarbage('collect')
  end
  if alone == 0 and n < tonumber(ARGV[1]) and (redis.call('EXISTS', groups) == 1
    or (ARGV[13] ~= '' and redis.call('EXISTS', KEYS[7]) == 1)) then
    limited = true
  end
  out[1] = alone == 0 and limited and 2 or alone
  if n > 0 then
    redis.call('RPUSH', KEYS[2], unpack(out, 2, n + 1))
  end
  return with_merged(out)
end

if field ~= '' then
  return take_grouped()
end

local items = redis.call('LRANGE', source, 0, most - 1)
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
-- Bursts pending: look again soon, whatever K does.
if ARGV[13] ~= '' and n < tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[7]) == 1 then
  limited = true
end
local out = {alone == 0 and limited and 2 or alone}
for i = 1, n do
  out[i + 1] = items[i]
end
items = nil
if big then
  -- The copy of a large item is garbage now: freed at once, not later.
  collectgarbage('collect')
end
if n == 0 then
  return with_merged(out)
end
redis.call('LTRIM', source, n, -1)
redis.call('RPUSH', KEYS[2], unpack(out, 2, n + 1))
return with_merged(out)
