-- publish: lifecycle events, each published on the events channel (one JSON
-- object per message) and, when replay is on, appended to the capped replay
-- stream, up to 16 events per stream entry (the field `event` repeated):
-- one XADD per 16 events costs Redis a fraction of one per event. One call
-- per batch, so each event crosses the wire once.
-- KEYS[1] the replay stream (untouched when ARGV[2] is 0)
-- ARGV[1] the events channel
-- ARGV[2] about how many events the stream keeps; 0 for no stream
-- ARGV[3..] the events, in order
-- Returns how many events were published.
local keep = tonumber(ARGV[2])
local per_entry = 16
for i = 3, #ARGV do
  redis.call('PUBLISH', ARGV[1], ARGV[i])
end
if keep > 0 then
  for first = 3, #ARGV, per_entry do
    local last = math.min(first + per_entry - 1, #ARGV)
    local entry = {}
    for i = first, last do
      entry[#entry + 1] = 'event'
      entry[#entry + 1] = ARGV[i]
    end
    -- Entries, not events, are trimmed: keep as many entries as hold
    -- about `keep` events at this entry's size.
    local entries = math.ceil(keep / (last - first + 1))
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', entries, '*', unpack(entry))
  end
end
return #ARGV - 2
