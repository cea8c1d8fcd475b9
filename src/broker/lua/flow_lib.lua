-- The functions the flow scripts share (flow_submit.lua, flow_advance.lua).
-- Their KEYS are one flow's keys, in the order of keys.rs FlowKeys::all:
-- 1 meta, 2 spec, 3 state, 4 left, 5 bad, 6 when, 7 children, 8 parents,
-- 9 outbox, 10 results, 11 ends. A node's state is 'pending' (waiting for
-- its parents), 'waiting' (released to its queue), or how it ended:
-- 'succeeded', 'dead', 'skipped', 'cancelled'.
local flow_released = {}
local flow_settled = {}
-- Nodes in their queues (or running) to cancel there.
local flow_to_cancel = {}

-- Releases `name`: its parents' statuses and results as its job's
-- `parents` field, kept in the outbox until its queue has the job. The
-- results are JSON written by the daemon and names are [A-Za-z0-9_.-]+,
-- so the field is put together without decoding anything.
local function flow_release(name)
  redis.call('HSET', KEYS[3], name, 'waiting')
  local parts = {}
  local parents = redis.call('HGET', KEYS[8], name) or ''
  for parent in string.gmatch(parents, '%S+') do
    local status = redis.call('HGET', KEYS[3], parent)
    local result = redis.call('HGET', KEYS[10], parent)
    local part = '"' .. parent .. '":{"status":"' .. status .. '"'
    if result then part = part .. ',"result":' .. result end
    parts[#parts + 1] = part .. '}'
  end
  redis.call('HSET', KEYS[9], name, '{' .. table.concat(parts, ',') .. '}')
  flow_released[#flow_released + 1] = name
end

-- Records that `name` ended as `status` (with `result`, '' for none), then
-- settles each child whose parents all ended: released, or skipped (a
-- parent did not succeed and it runs only after successes), or cancelled
-- (the flow is cancelled). A settled child ends too, and so on down: each
-- node and edge is visited once.
local function flow_end_node(name, status, result, attempt, now)
  local ends = {{name, status, result, attempt}}
  local cancelled = redis.call('HGET', KEYS[1], 'cancelled_at')
  while #ends > 0 do
    local e = table.remove(ends)
    local node, st = e[1], e[2]
    redis.call('HSET', KEYS[3], node, st)
    if e[3] ~= '' then redis.call('HSET', KEYS[10], node, e[3]) end
    redis.call('HSET', KEYS[11], node, e[4] .. ' ' .. now)
    -- The flow's counts, not a queue's stats.
    local meta = KEYS[1]
    redis.call('HINCRBY', meta, 'ended', 1)
    redis.call('HINCRBY', meta, st, 1)
    if node ~= name then flow_settled[#flow_settled + 1] = node .. ' ' .. st end
    local children = redis.call('HGET', KEYS[7], node) or ''
    for child in string.gmatch(children, '%S+') do
      if redis.call('HGET', KEYS[3], child) == 'pending' then
        if st ~= 'succeeded' then redis.call('HSET', KEYS[5], child, '1') end
        if redis.call('HINCRBY', KEYS[4], child, -1) <= 0 then
          redis.call('HDEL', KEYS[4], child)
          if cancelled then
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

-- Cancels the flow: the nodes pending, and those released and not yet in
-- their queue, end 'cancelled' (with what depends on them); those in their
-- queues are listed to be cancelled there, as `conveyor cancel` does (their
-- ends come back as their jobs end). Cancelling twice lists them again.
local function flow_cancel(now)
  redis.call('HSETNX', KEYS[1], 'cancelled_at', now)
  local states = redis.call('HGETALL', KEYS[3])
  for j = 1, #states, 2 do
    local name = states[j]
    -- Read again: an earlier one's end may have settled it.
    local state = redis.call('HGET', KEYS[3], name)
    if state == 'waiting' and redis.call('HDEL', KEYS[9], name) == 1 then
      state = 'pending'
    end
    if state == 'pending' then
      flow_end_node(name, 'cancelled', '', '0', now)
      flow_settled[#flow_settled + 1] = name .. ' cancelled'
    elseif state == 'waiting' then
      flow_to_cancel[#flow_to_cancel + 1] = name
    end
  end
end

-- The flow's end, if every node has ended and it had not ended before:
-- its status, written with when it ended, and every key of the flow given
-- the lifetime `ttl` (ms). '' otherwise.
local function flow_finish(now, ttl)
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
  for i = 1, 11 do redis.call('PEXPIRE', KEYS[i], ttl) end
  return status
end

-- The reply: the flow's status if it ended in this call, the nodes settled
-- down the line ('<name> <status>'), the nodes to cancel in their queues
-- (name and spec), then name, parents and spec of each node to hand to its
-- queue: those released in this call, or with `all` every one in the
-- outbox.
local function flow_reply(status, all)
  local out = {status, #flow_settled}
  for _, s in ipairs(flow_settled) do out[#out + 1] = s end
  out[#out + 1] = #flow_to_cancel
  for _, name in ipairs(flow_to_cancel) do
    out[#out + 1] = name
    out[#out + 1] = redis.call('HGET', KEYS[2], name)
  end
  local names = flow_released
  if all then names = redis.call('HKEYS', KEYS[9]) end
  for _, name in ipairs(names) do
    out[#out + 1] = name
    out[#out + 1] = redis.call('HGET', KEYS[9], name) or '{}'
    out[#out + 1] = redis.call('HGET', KEYS[2], name)
  end
  return out
end
