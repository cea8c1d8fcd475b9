-- flow_submit: stores a checked flow document in its slot, once, and
-- releases the nodes that wait for nothing. A flow already stored is left
-- as it is (a second submission of its id is ignored), and what it still
-- has to hand to its queues is returned again, so a document read twice
-- after a crash finishes its hand-off. A flow with no nodes ends at once.
-- KEYS[1..] the flow's keys (flow_lib.lua)
-- ARGV[1] now (RFC 3339)
-- ARGV[2] on_failure: 'continue' | 'cancel'
-- ARGV[3] how long the flow's state stays once it ended (ms)
-- ARGV[4] the number of nodes n, then five values per node: name, spec
--         (JSON), parents and children (space-separated names), and 'f'
--         if it runs whatever its parents' ends, else 's'
-- Returns flow_reply's: the status if it ended (an empty flow), no nodes
-- settled or to cancel, then name, parents and spec per node released; for
-- a flow already stored, status 'duplicate' and every node in the outbox.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local out = flow_reply('', true)
  out[1] = 'duplicate'
  return out
end
local now, n = ARGV[1], tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'running', 'on_failure', ARGV[2],
  'created_at', now, 'total', n, 'ended', 0)
for i = 5, 4 + 5 * n, 5 do
  local name, parents = ARGV[i], ARGV[i + 2]
  redis.call('HSET', KEYS[2], name, ARGV[i + 1])
  if parents ~= '' then
    redis.call('HSET', KEYS[8], name, parents)
    local count = 0
    for _ in string.gmatch(parents, '%S+') do count = count + 1 end
    redis.call('HSET', KEYS[4], name, count)
    redis.call('HSET', KEYS[3], name, 'pending')
  end
  if ARGV[i + 3] ~= '' then redis.call('HSET', KEYS[7], name, ARGV[i + 3]) end
  if ARGV[i + 4] == 'f' then redis.call('HSET', KEYS[6], name, '1') end
end
for i = 5, 4 + 5 * n, 5 do
  if ARGV[i + 2] == '' then flow_release(ARGV[i]) end
end
return flow_reply(flow_finish(now, ARGV[3]), false)
