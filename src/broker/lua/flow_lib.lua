-- The functions the flow scripts share (flow_submit.lua, flow_advance.lua,
-- flow_cancel.lua). Their KEYS are one flow's keys, in the order of
-- keys.rs FlowKeys::all: 1 meta, 2 spec, 3 state, 4 left, 5 bad, 6 when,
-- 7 children, 8 parents, 9 results, 10 ends. A node's state is 'pending'
-- (waiting for its parents), 'waiting' (released: on its way to its queue,
-- in it, or running), or how it ended: 'succeeded', 'dead', 'skipped',
-- 'cancelled'.
--
-- A node released is handed to its queue by the caller after the script;
-- no record of the hand-off is kept here: a step done again after a crash
-- finds the nodes it released by their state ('waiting') and returns them
-- again, and their queue pushes each once (flow_release.lua).
local flow_released, flow_is_released = {}, {}
local flow_settled = {}
-- Nodes in their queues (or running) to cancel there.
local flow_to_cancel = {}
-- meta field -> what this call adds to it, written once (flow_finish).
local flow_counts = {}
-- The flow's cancelled_at, once read (false: not cancelled).
local flow_cancelled = nil
-- Nodes' states read or written in this call (false: none), and those
-- written, kept here and written at once (flow_flush): a call that takes a
-- thousand ends writes each hash once.
local flow_states, flow_dirty = {}, {}
-- Ends to write into KEYS[10] (name, attempt and time), at once.
local flow_ends_written = {}
-- With it set, a reply names the released nodes alone (the caller has
-- their specs, and they have no parents).
local flow_names_only = false

local function flow_state(name)
  local state = flow_states[name]
  if state == nil then
    state = redis.call('HGET', KEYS[3], name) or false
    flow_states[name] = state
  end
  return state
end

-- Reads the states of `names` at once, for flow_state.
local function flow_prefetch(names)
  for from = 1, #names, 1000 do
    local to = math.min(from + 999, #names)
    local states = redis.call('HMGET', KEYS[3], unpack(names, from, to))
    for k = 1, to - from + 1 do
      if flow_states[names[from + k - 1]] == nil then
        flow_states[names[from + k - 1]] = states[k] or false
      end
    end
  end
end

local function flow_set_state(name, state)
  flow_states[name] = state
  flow_dirty[name] = true
end

local function flow_is_cancelled()
  if flow_cancelled == nil then
    flow_cancelled = redis.call('HGET', KEYS[1], 'cancelled_at') or false
  end
  return flow_cancelled
end

-- Lists `name` among the nodes to hand to their queue (once).
local function flow_mark_released(name)
  if not flow_is_released[name] then
    flow_is_released[name] = true
    flow_released[#flow_released + 1] = name
  end
end

local function flow_release(name)
  flow_set_state(name, 'waiting')
  flow_mark_released(name)
end

-- HSET of many field-value pairs, a thousand values a call (Lua's unpack
-- is bounded).
local function flow_hset_all(key, pairs_list)
  for from = 1, #pairs_list, 1000 do
    redis.call('HSET', key, unpack(pairs_list, from, math.min(from + 999, #pairs_list)))
  end
end

-- Writes the states and ends kept in this call.
local function flow_flush()
  local states = {}
  for name in pairs(flow_dirty) do
    states[#states + 1] = name
    states[#states + 1] = flow_states[name]
  end
  flow_hset_all(KEYS[3], states)
  flow_hset_all(KEYS[10], flow_ends_written)
  flow_dirty, flow_ends_written = {}, {}
end

-- Records that `name` ended as `status` (with `result`, '' for none), then
-- settles each child whose parents all ended: released, or skipped (a
-- parent did not succeed and it runs only after successes), or cancelled
-- (the flow is cancelled). A settled child ends too, and so on down: each
-- node and edge is visited once.
local function flow_end_node(name, status, result, attempt, now)
  local ends = {{name, status, result, attempt}}
  while #ends > 0 do
    local e = table.remove(ends)
    local node, st = e[1], e[2]
    flow_set_state(node, st)
    if e[3] ~= '' then redis.call('HSET', KEYS[9], node, e[3]) end
    flow_ends_written[#flow_ends_written + 1] = node
    flow_ends_written[#flow_ends_written + 1] = e[4] .. ' ' .. now
    flow_counts.ended = (flow_counts.ended or 0) + 1
    flow_counts[st] = (flow_counts[st] or 0) + 1
    if node ~= name then flow_settled[#flow_settled + 1] = node .. ' ' .. st end
    local children = redis.call('HGET', KEYS[7], node)
    for child in string.gmatch(children or '', '%S+') do
      if flow_state(child) == 'pending' then
        if st ~= 'succeeded' then redis.call('HSET', KEYS[5], child, '1') end
        if redis.call('HINCRBY', KEYS[4], child, -1) <= 0 then
          redis.call('HDEL', KEYS[4], child)
          if flow_is_cancelled() then
            ends[#ends + 1] = {child, 'cancelled', '', '0'}
          elseif redis.call('HEXISTS', KEYS[5], child) == 1
              and redis.call('HEXISTS', KEYS[6], child) == 0 then
            ends[#ends + 1] = {child, 'skipped', '', '0'}
          else
            flow_release(child)
          end
        end
      end
    end
  end
end

-- What the end of `name`, taken before, released: its children still
-- 'waiting', and through those it settled without running (skipped,
-- cancelled) theirs. Listed again to be handed to their queues.
local function flow_redrive(name)
  local todo, seen = {name}, {}
  while #todo > 0 do
    local node = table.remove(todo)
    local children = redis.call('HGET', KEYS[7], node)
    for child in string.gmatch(children or '', '%S+') do
      if not seen[child] then
        seen[child] = true
        local state = flow_state(child)
        if state == 'waiting' then
          flow_mark_released(child)
        elseif state == 'skipped' or state == 'cancelled' then
          todo[#todo + 1] = child
        end
      end
    end
  end
end

-- Cancels the flow: the nodes pending end 'cancelled' (with what depends
-- on them); those released are listed to be cancelled in their queues, as
-- `conveyor cancel` does (their ends come back as their jobs end).
-- Cancelling twice lists them again.
local function flow_cancel(now)
  redis.call('HSETNX', KEYS[1], 'cancelled_at', now)
  flow_cancelled = now
  flow_flush()
  local states = redis.call('HGETALL', KEYS[3])
  for j = 1, #states, 2 do
    local name = states[j]
    -- Read again: an earlier one's end may have settled it.
    local state = flow_state(name)
    if state == 'pending' then
      flow_end_node(name, 'cancelled', '', '0', now)
      flow_settled[#flow_settled + 1] = name .. ' cancelled'
    elseif state == 'waiting' then
      flow_to_cancel[#flow_to_cancel + 1] = name
    end
  end
end

-- Writes this call's counts; then the flow's end, if every node has ended
-- and it had not ended before: its status, written with when it ended,
-- and every key of the flow given the lifetime `ttl` (ms). '' otherwise.
local function flow_finish(now, ttl)
  flow_flush()
  for field, n in pairs(flow_counts) do
    redis.call('HINCRBY', KEYS[1], field, n)
  end
  flow_counts = {}
  local m = redis.call('HMGET', KEYS[1], 'status', 'total', 'ended', 'dead', 'skipped',
    'cancelled', 'cancelled_at')
  if m[1] ~= 'running' or tonumber(m[3] or 0) < tonumber(m[2]) then return '' end
  local status = 'succeeded'
  if m[7] then
    status = 'cancelled'
  elseif tonumber(m[4] or 0) + tonumber(m[5] or 0) + tonumber(m[6] or 0) > 0 then
    status = 'failed'
  end
  redis.call('HSET', KEYS[1], 'status', status, 'ended_at', now)
  for i = 1, 10 do redis.call('PEXPIRE', KEYS[i], ttl) end
  return status
end

-- A released node's `parents` field: each parent's status and result. The
-- results are JSON written by the daemon and names are [A-Za-z0-9_.-]+, so
-- it is put together without decoding anything.
local function flow_parents_json(name)
  local list = redis.call('HGET', KEYS[8], name)
  if not list then return '{}' end
  local names = {}
  for parent in string.gmatch(list, '%S+') do names[#names + 1] = parent end
  local parts = {}
  for from = 1, #names, 1000 do
    local to = math.min(from + 999, #names)
    local states = redis.call('HMGET', KEYS[3], unpack(names, from, to))
    local results = redis.call('HMGET', KEYS[9], unpack(names, from, to))
    for k = 1, to - from + 1 do
      local part = '"' .. names[from + k - 1] .. '":{"status":"' .. tostring(states[k]) .. '"'
      if results[k] then part = part .. ',"result":' .. results[k] end
      parts[#parts + 1] = part .. '}'
    end
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- The reply: the flow's status if it ended in this call, the nodes settled
-- down the line ('<name> <status>'), the nodes to cancel in their queues
-- (name and spec), then name, parents and spec of each node to hand to its
-- queue.
local function flow_reply(status)
  flow_flush()
  local out = {status, #flow_settled}
  for _, s in ipairs(flow_settled) do out[#out + 1] = s end
  out[#out + 1] = #flow_to_cancel
  for _, name in ipairs(flow_to_cancel) do
    out[#out + 1] = name
    out[#out + 1] = redis.call('HGET', KEYS[2], name)
  end
  for _, name in ipairs(flow_released) do
    out[#out + 1] = name
    if flow_names_only then
      out[#out + 1], out[#out + 2] = '', ''
    else
      out[#out + 1] = flow_parents_json(name)
      out[#out + 1] = redis.call('HGET', KEYS[2], name)
    end
  end
  return out
end
