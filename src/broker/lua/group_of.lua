-- group_of: a prelude of the scripts that sort, take and finish the jobs of
-- a queue with `group` (DESIGN section 14), not a script of its own.
-- group_of(item, field) is the group of a list item: the value of the
-- top-level field `field` of its payload (the envelope's `payload`, or the
-- item itself when it is a raw payload), a string as it is and a number as
-- its JSON text; '' for a job without it, one whose payload is not an
-- object, or an item that is not JSON. A value over 128 bytes is known by
-- its SHA-1 ('sha1:<hex>'), so that a group's keys stay short. The one
-- definition of a job's group: the same bytes always give the same group,
-- so that a job is counted out of the group it was counted into.
local function group_of(item, field)
  -- Most items of most queues name the field as it is written: a decode
  -- only for those (a name spelled with escapes is not looked for).
  if not string.find(item, field, 1, true) then
    return ''
  end
  local ok, job = pcall(cjson.decode, item)
  if not ok or type(job) ~= 'table' then
    return ''
  end
  if job.id ~= nil and job.payload ~= nil and job.attempt ~= nil then
    job = job.payload
    if type(job) ~= 'table' then
      return ''
    end
  end
  local value = job[field]
  local kind = type(value)
  if kind == 'number' then
    value = cjson.encode(value)
  elseif kind ~= 'string' then
    return ''
  end
  if #value > 128 then
    return 'sha1:' .. redis.sha1hex(value)
  end
  return value
end
