-- flow_submit: stores a checked flow document in its slot, once, and
-- releases the nodes that wait for nothing. A flow already stored is left
-- as it is (a second submission of its id is ignored), and its first nodes
-- still 'waiting' are returned again, so a document read twice after a
-- crash finishes its hand-off (their queue pushes each once). A flow with
-- no nodes ends at once.
-- KEYS[1..] the flow's keys (flow_lib.lua)
-- ARGV[1] now (RFC 3339)
-- ARGV[2] on_failure: 'continue' | 'cancel'
-- ARGV[3] how long the flow's state stays once it ended (ms)
-- ARGV[4] the number of nodes n, then five values per node: name, spec
--         (JSON), parents and children (space-separated names), and 'f'
--         if it runs whatever its parents' ends, else 's'
-- Returns flow_reply's: the status if it ended (an empty flow), no nodes
-- settled or to cancel, then each node released by name alone (with '' for
-- its parents and spec: the caller has the document, and such a node has
-- no parents); for a flow already stored, status 'duplicate'.
flow_names_only = true
if redis.call('EXISTS', KEYS[1]) == 1 then
  local states = redis.call('HGETALL', KEYS[3])
  for j = 1, #states, 2 do
    if states[j + 1] == 'waiting' and redis.call('HEXISTS', KEYS[8], states[j]) == 0 then
      flow_mark_released(states[j])
    end
  end
  local out = flow_reply('')
  out[1] = 'duplicate'
  return out
end
local now, n = ARGV[1], tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'running', 'on_failure', ARGV[2],
  'created_at', now, 'total', n, 'ended', 0)
local spec, state, left, parents, children, when = {}, {}, {}, {}, {}, {}
for i = 5, 4 + 5 * n, 5 do
  local name, node_parents = ARGV[i], ARGV[i + 2]
  spec[#spec + 1], spec[#spec + 2] = name, ARGV[i + 1]
  state[#state + 1] = name
  if node_parents ~= '' then
    local count = 0
    for _ in string.gmatch(node_parents, '%S+') do count = count + 1 end
    parents[#parents + 1], parents[#parents + 2] = name, node_parents
    left[#left + 1], left[#left + 2] = name, count
    state[#state + 1] = 'pending'
  else
    state[#state + 1] = 'waiting'
    flow_mark_released(name)
  end
  if ARGV[i + 3] ~= '' then children[#children + 1], children[#children + 2] = name, ARGV[i + 3] end
  if ARGV[i + 4] == 'f' then when[#when + 1], when[#when + 2] = name, '1' end
end
flow_hset_all(KEYS[2], spec)
flow_hset_all(KEYS[3], state)
flow_hset_all(KEYS[4], left)
flow_hset_all(KEYS[6], when)
flow_hset_all(KEYS[7], children)
flow_hset_all(KEYS[8], parents)
return flow_reply(flow_finish(now, ARGV[3]))
