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
-- to SORT_MOST of its waiting jobs into their groups' lists (group_of.lua);
-- a group whose list was empty gets a turn in {K}:group:turns after every
-- other's (its score), and keeps it while it holds jobs. Then it takes from
-- the groups in turn, one job per turn, going round the turns: from the
-- one after the last served ({K}:group:next holds its score), then from
-- the first. When every group had its turn and there is room for more, the
-- groups served give more, as evenly as their room allows (one LPOP of
-- several jobs each). Nothing is written per turn: a turn costs a read.
-- A group with a limit (ARGV[8]) that has as many jobs in flight on the
-- nodes of {K}:nodes as its limit is passed over, and has its next turn
-- when the round comes back to it. A group found empty loses its turn. A
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
-- KEYS[9] the turn of the group served last {K}:group:next
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

  -- Sort: one RPUSH per group (of up to PUSH_MOST jobs) per call; a group
  -- whose list was empty gets the turn after every other's.
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
    local fresh = {}
    for _, group in ipairs(found) do
      local jobs, list = sorted[group], prefix .. group
      local size = 0
      for from = 1, #jobs, PUSH_MOST do
        size = redis.call('RPUSH', list, unpack(jobs, from, math.min(from + PUSH_MOST - 1, #jobs)))
      end
      if size == #jobs then
        fresh[#fresh + 1] = group
      end
    end
    sorted = nil
    if #fresh > 0 then
      local last = redis.call('ZRANGE', groups, -1, -1, 'WITHSCORES')
      local turn = tonumber(last[2] or 0)
      for from = 1, #fresh, PUSH_MOST do
        local adds = {'NX'}
        for i = from, math.min(from + PUSH_MOST - 1, #fresh) do
          turn = turn + 1
          adds[#adds + 1] = turn
          adds[#adds + 1] = fresh[i]
        end
        redis.call('ZADD', groups, unpack(adds))
      end
    end
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
  local function room(group)
    if per_group == 0 then
      return most
    end
    return per_group - counted[group]
  end

  local out, n, alone, big, stop = {0}, 0, 0, false, false
  local took, served, empty = {}, {}, {}
  -- The group whose jobs went back to its list: the next call begins there.
  local held_up = nil
  -- Takes `items`, popped from the head of `group`'s list (an ordered
  -- group's one job only read there), in order; from the first that may
  -- not go with the others (a suspect after other jobs, a second item too
  -- large without an id), they go back to the head and the call stops.
  -- Whether any was taken.
  local function accept(group, items)
    local list = prefix .. group
    for i = 1, #items do
      local item, back = items[i], false
      if #item > limit then
        local small, used = stand_in(item, head_bytes, fresh_id)
        if small then
          if used then fresh_id = nil end
          item, big = small, true
          -- Dead-lettered as its stand-in: not kept at the head.
          if ordered then redis.call('LPOP', list) end
        else
          back = true
        end
      elseif suspect(item) then
        if n > 0 then
          back = true
        else
          alone, stop = 1, true
        end
      end
      if back then
        -- An ordered group's job was never taken off its list.
        if not ordered then
          local rest = {}
          for j = #items, i, -1 do
            rest[#rest + 1] = items[j]
          end
          redis.call('LPUSH', list, unpack(rest))
        end
        stop, held_up = true, group
        return i > 1
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
      if alone == 1 then
        -- A suspect goes alone: the rest of its group's jobs go back.
        if i < #items and not ordered then
          local rest = {}
          for j = #items, i + 1, -1 do
            rest[#rest + 1] = items[j]
          end
          redis.call('LPUSH', list, unpack(rest))
        end
        return true
      end
    end
    return true
  end
  -- One job of `group` if it has room, in its turn: whether it gave one.
  local function serve(group)
    if room(group) <= 0 then
      return false
    end
    local due = 0
    if ordered then
      due = tonumber(redis.call('HGET', KEYS[6], group) or 0)
      if due > now then
        return false
      end
    end
    -- An ordered group's job stays at the head until its outcome.
    local item
    if ordered then
      item = redis.call('LINDEX', prefix .. group, 0)
    else
      item = redis.call('LPOP', prefix .. group)
    end
    if not item then
      -- Emptied (its last job taken, or cancelled): its turn goes.
      empty[#empty + 1] = group
      return false
    end
    local gave = accept(group, {item})
    if gave and ordered and due > 0 then
      redis.call('HDEL', KEYS[6], group)
    end
    return gave
  end

  -- The first round: the groups after the last one served ({K}:group:next
  -- holds its turn), in their turns' order, then from the first turn round
  -- to it, a page at a time. A group passed over (at its limit, or waiting
  -- for a retry) is still ahead of the last one served: the next call
  -- looks at it first.
  local next_turn = redis.call('GET', KEYS[9])
  local looked, last = 0, nil
  local spans = {{'-inf', '+inf'}}
  if next_turn then
    spans = {{'(' .. next_turn, '+inf'}, {'-inf', next_turn}}
  end
  for _, span in ipairs(spans) do
    local from = span[1]
    while n < most and not stop and looked < PASS_MOST do
      local page = redis.call('ZRANGEBYSCORE', groups, from, span[2], 'WITHSCORES',
        'LIMIT', 0, math.min(most - n, PASS_MOST - looked))
      if #page == 0 then
        break
      end
      local names = {}
      for i = 1, #page, 2 do
        names[#names + 1] = page[i]
      end
      count(names)
      for i = 1, #page, 2 do
        if n >= most or stop then
          break
        end
        if serve(page[i]) and not held_up then
          last = page[i + 1]
        end
        looked = looked + 1
      end
      from = '(' .. page[#page]
    end
    if n >= most or stop or looked >= PASS_MOST then
      break
    end
  end

  -- Then more of the groups served, as evenly as their room allows: one
  -- LPOP of several jobs per group; a group that gives fewer is empty, and
  -- the next round (for what the empty ones did not give) begins after the
  -- last group given a share.
  local again = {}
  if not ordered then
    for _, group in ipairs(served) do
      again[#again + 1] = group
    end
  end
  while n < most and not stop and #again > 0 do
    local open = {}
    for _, group in ipairs(again) do
      if room(group) > 0 then
        open[#open + 1] = group
      end
    end
    local left, after, more = most - n, 0, {}
    for i, group in ipairs(open) do
      if n >= most or stop then
        break
      end
      local share = math.floor(left / #open) + ((i <= left % #open) and 1 or 0)
      share = math.min(share, room(group))
      more[i] = true
      if share > 0 then
        after = i
        local items = redis.call('LPOP', prefix .. group, share)
        if not items then
          empty[#empty + 1], more[i] = group, false
        else
          accept(group, items)
          if #items < share and not held_up and alone == 0 then
            empty[#empty + 1], more[i] = group, false
          end
        end
      end
    end
    again = {}
    for i = after + 1, #open + after do
      local at = (i - 1) % #open + 1
      if more[at] and room(open[at]) > 0 then
        again[#again + 1] = open[at]
      end
    end
  end

  if held_up then
    -- Just before its turn, so that its job goes first (a suspect alone).
    last = tonumber(redis.call('ZSCORE', groups, held_up)) - 0.5
  end
  if last then
    redis.call('SET', KEYS[9], last)
  end
  if n < most and not stop and not ordered then
    -- Fewer than asked for: the groups served may be empty now, and the
    -- verdict must not say jobs are held for them. (A full take leaves
    -- that to the next call that finds them empty.)
    local gone = {}
    for _, group in ipairs(empty) do
      gone[group] = true
    end
    for _, group in ipairs(served) do
      if not gone[group] and redis.call('LLEN', prefix .. group) == 0 then
        empty[#empty + 1] = group
      end
    end
  end
  if #empty > 0 then
    redis.call('ZREM', groups, unpack(empty))
  end
  if #served > 0 then
    -- This node's counts: one read and one write.
    local had = redis.call('HMGET', KEYS[5], unpack(served))
    local bumps = {}
    for i, group in ipairs(served) do
      bumps[#bumps + 1] = group
      bumps[#bumps + 1] = took[group] + (tonumber(had[i]) or 0)
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
