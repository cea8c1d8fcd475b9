-- undebounce: a queue that no longer has `debounce` puts its jobs ready to
-- take and its pending bursts back at the head of its list: the ready
-- jobs first, in order, then each burst's job (its kept one, or every
-- arrival of an 'all' burst), ahead of the jobs that came after them.
-- KEYS[1] the queue list K
-- KEYS[2] the queue's jobs ready to take {K}:group:ready
-- KEYS[3] the queue's bursts by due time {K}:group:bursts
-- ARGV[1] the bursts' hashes' common prefix {K}:group:burst:
-- ARGV[2] the bursts' arrivals' lists' common prefix {K}:group:burst-all:
-- ARGV[3] the most bursts to release in this call
-- Returns {moved, bursts left}: call again while bursts are left.
local jobs = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
for _, value in ipairs(redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[3]) - 1)) do
  local all = redis.call('LRANGE', ARGV[2] .. value, 0, -1)
  if #all > 0 then
    for _, item in ipairs(all) do
      jobs[#jobs + 1] = item
    end
  else
    local item = redis.call('HGET', ARGV[1] .. value, 'item')
    if item then
      jobs[#jobs + 1] = item
    end
  end
  redis.call('DEL', ARGV[1] .. value, ARGV[2] .. value)
  redis.call('ZREM', KEYS[3], value)
end
for i = #jobs, 1, -1 do
  redis.call('LPUSH', KEYS[1], jobs[i])
end
return {#jobs, redis.call('ZCARD', KEYS[3])}
