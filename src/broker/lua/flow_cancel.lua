-- flow_cancel: cancels a running flow (`conveyor flow cancel`): its nodes
-- pending end 'cancelled', and those released are returned to be
-- cancelled in their queues. A flow that ended is left as it is.
-- KEYS[1..] the flow's keys (flow_lib.lua)
-- ARGV[1] now (RFC 3339)
-- ARGV[2] how long the flow's state stays once it ended (ms)
-- Returns flow_reply's (nothing released), or {'unknown', 0, 0} for a flow
-- not stored, or {'ended', 0, 0} for one that ended.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown', 0, 0} end
if status ~= 'running' then return {'ended', 0, 0} end
flow_cancel(ARGV[1])
return flow_reply(flow_finish(ARGV[1], ARGV[2]))
