-- flow_advance: takes the ends of some of a flow's nodes (each recorded
-- with its job's outcome in its queue's {K}:flows:ended) and settles what
-- follows: children released, skipped or cancelled, the flow's end. An
-- end already taken (the hand-off done again after a crash) changes
-- nothing, and then the nodes it released that are still 'waiting' are
-- returned, to be handed to their queue again (which pushes each once). A first node of a flow
-- with on_failure = 'cancel' that does not succeed cancels it (section 13,
-- flow_cancel). A node that succeeded may add nodes to its flow (its
-- result's flow_add): they join the flow before its end is taken, so
-- nothing after it settles before them. Additions that name a node of the
-- flow, are after no node of it, or pass max_nodes are refused whole: the
-- node then ends 'dead' in its flow, the reason its result.
-- KEYS[1..] the flow's keys (flow_lib.lua)
-- ARGV[1] now (RFC 3339)
-- ARGV[2] how long the flow's state stays once it ended (ms)
-- ARGV[3] most nodes the flow may have
-- ARGV[4..] per end: the node's name, how it ended ('succeeded' | 'dead'
--         | 'cancelled'), its result (JSON, '' for none), its attempt and a
--         count a of the nodes it adds, then four values per added node:
--         name, spec (JSON), parents (space-separated; the ending node
--         and earlier nodes may be among them; none is taken as the ending
--         node alone), 'f' or 's' (flow_submit.lua)
-- Returns flow_reply's, or {'unknown', 0, 0} for a flow not stored (or
-- gone past its lifetime).
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown', 0, 0} end
local now, again = ARGV[1], false
local meta = KEYS[1]
-- The ending nodes' states, read at once.
local ending = {}
local i = 4
while i <= #ARGV do
  ending[#ending + 1] = ARGV[i]
  i = i + 5 + 4 * tonumber(ARGV[i + 4])
end
flow_prefetch(ending)

-- Adds the a nodes given from ARGV[at]; returns why not, or nil and the
-- added nodes whose parents had all ended already.
local function add_nodes(at, a, ending)
  local last = at + 4 * (a - 1)
  local added = {}
  for j = at, last, 4 do added[ARGV[j]] = true end
  local total = tonumber(redis.call('HGET', meta, 'total'))
  if total + a > tonumber(ARGV[3]) then
    return 'the flow would have ' .. (total + a) .. ' nodes, more than max_nodes ('
      .. ARGV[3] .. ')'
  end
  for j = at, last, 4 do
    local name = ARGV[j]
    if redis.call('HEXISTS', KEYS[2], name) == 1 then
      return 'node ' .. name .. ' is in the flow already'
    end
    for parent in string.gmatch(ARGV[j + 2], '%S+') do
      if not added[parent] and redis.call('HEXISTS', KEYS[2], parent) == 0 then
        return 'node ' .. name .. ' is after ' .. parent .. ', which is no node of the flow'
      end
    end
  end
  redis.call('HINCRBY', meta, 'total', a)
  -- A node added after nothing is after the one adding it, which ends
  -- (succeeded) in this call: a hand-off done again finds it among its
  -- children.
  local function parents_of(j)
    if ARGV[j + 2] == '' then return ending end
    return ARGV[j + 2]
  end
  for j = at, last, 4 do
    local name = ARGV[j]
    redis.call('HSET', KEYS[2], name, ARGV[j + 1])
    flow_set_state(name, 'pending')
    redis.call('HSET', KEYS[8], name, parents_of(j))
    if ARGV[j + 3] == 'f' then redis.call('HSET', KEYS[6], name, '1') end
  end
  local ready = {}
  for j = at, last, 4 do
    local name, left = ARGV[j], 0
    for parent in string.gmatch(parents_of(j), '%S+') do
      local state = flow_state(parent)
      if state == 'pending' or state == 'waiting' then
        local children = redis.call('HGET', KEYS[7], parent)
        redis.call('HSET', KEYS[7], parent, children and (children .. ' ' .. name) or name)
        left = left + 1
      elseif state ~= 'succeeded' then
        redis.call('HSET', KEYS[5], name, '1')
      end
    end
    if left > 0 then
      redis.call('HSET', KEYS[4], name, left)
    else
      ready[#ready + 1] = name
    end
  end
  return nil, ready
end

i = 4
while i <= #ARGV do
  local name, status, result, attempt = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local a, at = tonumber(ARGV[i + 4]), i + 5
  i = at + 4 * a
  local state = flow_state(name)
  if state ~= 'waiting' and state ~= 'pending' then
    again = true
    if state then flow_redrive(name) end
  else
    local ready = {}
    if a > 0 and status == 'succeeded' then
      local refused
      refused, ready = add_nodes(at, a, name)
      if refused then
        status = 'dead'
        result = '{"error":' .. cjson.encode('flow_add refused: ' .. refused) .. '}'
        ready = {}
      end
    end
    local cancel = status ~= 'succeeded'
      and redis.call('HGET', meta, 'on_failure') == 'cancel'
      and redis.call('HSETNX', meta, 'cancelled_at', now) == 1
    if cancel then flow_cancelled = now end
    flow_end_node(name, status, result, attempt, now)
    -- Added nodes whose parents all ended before them.
    for _, added in ipairs(ready) do
      if flow_state(added) == 'pending' then
        local how = nil
        if flow_is_cancelled() then
          how = 'cancelled'
        elseif redis.call('HEXISTS', KEYS[5], added) == 1
            and redis.call('HEXISTS', KEYS[6], added) == 0 then
          how = 'skipped'
        end
        if how then
          flow_end_node(added, how, '', '0', now)
          flow_settled[#flow_settled + 1] = added .. ' ' .. how
        else
          flow_release(added)
        end
      end
    end
    if cancel then flow_cancel(now) end
  end
end
-- Taken again after a crash: a cancel under way is listed again too.
if again and redis.call('HEXISTS', meta, 'cancelled_at') == 1
    and redis.call('HGET', meta, 'status') == 'running' then
  flow_cancel(now)
end
return flow_reply(flow_finish(now, ARGV[2]))
