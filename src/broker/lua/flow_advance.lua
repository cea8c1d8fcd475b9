-- flow_advance: takes the ends of some of a flow's nodes (each recorded
-- with its job's outcome in its queue's {K}:flows:ended) and settles what
-- follows: children released, skipped or cancelled, the flow's end. An
-- end already taken (the hand-off done again after a crash) changes
-- nothing, and then every node still in the outbox is returned, to be
-- handed to its queue again (which pushes it once). A first node of a flow
-- with on_failure = 'cancel' that does not succeed cancels it (section 13,
-- flow_cancel).
-- KEYS[1..] the flow's keys (flow_lib.lua)
-- ARGV[1] now (RFC 3339)
-- ARGV[2] how long the flow's state stays once it ended (ms)
-- ARGV[3..] four values per end: the node's name, how it ended
--         ('succeeded' | 'dead' | 'cancelled'), its result (JSON, '' for
--         none) and its attempt
-- Returns flow_reply's, or {'unknown', 0, 0} for a flow not stored (or
-- gone past its lifetime).
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown', 0, 0} end
local now, again = ARGV[1], false
for i = 3, #ARGV, 4 do
  local name, status = ARGV[i], ARGV[i + 1]
  local state = redis.call('HGET', KEYS[3], name)
  if state ~= 'waiting' and state ~= 'pending' then
    again = true
  else
    redis.call('HDEL', KEYS[9], name)
    local cancel = status ~= 'succeeded'
      and redis.call('HGET', KEYS[1], 'on_failure') == 'cancel'
      and redis.call('HSETNX', KEYS[1], 'cancelled_at', now) == 1
    flow_end_node(name, status, ARGV[i + 2], ARGV[i + 3], now)
    if cancel then flow_cancel(now) end
  end
end
-- Taken again after a crash: a cancel under way is listed again too.
if again and redis.call('HEXISTS', KEYS[1], 'cancelled_at') == 1
    and redis.call('HGET', KEYS[1], 'status') == 'running' then
  flow_cancel(now)
end
return flow_reply(flow_finish(now, ARGV[2]), again)
