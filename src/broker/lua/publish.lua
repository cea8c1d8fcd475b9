-- publish: lifecycle events, each published on the events channel and,
-- when replay is on, appended to the capped replay stream. One call per
-- batch: each event crosses the wire once, not once per command.
-- KEYS[1] the replay stream (untouched when ARGV[2] is 0)
-- ARGV[1] the events channel
-- ARGV[2] the stream's approximate length; 0 for no stream
-- ARGV[3..] the events, in order
-- Returns how many events were published.
local maxlen = tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('PUBLISH', ARGV[1], ARGV[i])
  if maxlen > 0 then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'event', ARGV[i])
  end
end
return #ARGV - 2
