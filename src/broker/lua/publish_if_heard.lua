-- publish_if_heard: publish lifecycle events on the events channel if
-- anyone subscribes to it now; Redis would drop them otherwise. Decided
-- here, as the events are published, so a subscriber that has just arrived
-- misses nothing. Used by `conveyor enqueue`, which announces a job before
-- pushing it; the daemon, which can publish a round trip late, asks
-- PUBSUB NUMSUB with each write instead and sends plain PUBLISH commands.
-- (no KEYS: a channel is not a key)
-- ARGV[1] the events channel
-- ARGV[2..] the events, in order
-- Returns how many subscribe to the channel.
local heard = redis.call('PUBSUB', 'NUMSUB', ARGV[1])[2]
if heard > 0 then
  for i = 2, #ARGV do
    redis.call('PUBLISH', ARGV[1], ARGV[i])
  end
end
return heard
