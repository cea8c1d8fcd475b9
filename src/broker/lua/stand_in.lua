-- stand_in: a prelude of the scripts that read list items, not a script of
-- its own. An item larger than the daemon may read is replaced, inside
-- Redis, by a stand-in: a small envelope that keeps its first bytes and its
-- size (envelope.rs, `Head`), so the item itself never crosses the wire.
-- stand_in(item, head_bytes, fresh_id) returns the stand-in's JSON, and
-- whether it used fresh_id; nil when it needs a fresh id and fresh_id is nil.
--
-- The stand-in keeps the item's id when the item begins, as every envelope
-- conveyor writes does, with `{"id":"<id>"` (1 to 200 printable ASCII
-- characters, no escapes); else it takes fresh_id. Its first bytes are kept
-- as text (`raw_head`) when they are UTF-8, a character cut at the end
-- dropped, else as base64 (`raw_head_base64`) like envelope.rs `Head::of`.

-- nil when s is UTF-8; else where the first bad character begins, and
-- whether it is only cut short by the end of s (like Rust's Utf8Error).
local function utf8_error(s)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len, lo, hi = 1, 0x80, 0xBF
    if c < 0x80 then
      len = 1
    elseif c >= 0xC2 and c <= 0xDF then
      len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else
      return i, false
    end
    for j = i + 1, i + len - 1 do
      if j > n then
        return i, true
      end
      local d = string.byte(s, j)
      if j > i + 1 then lo, hi = 0x80, 0xBF end
      if d < lo or d > hi then
        return i, false
      end
    end
    i = i + len
  end
  return nil
end

local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = string.byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local d1 = math.floor(n / 262144) % 64
    local d2 = math.floor(n / 4096) % 64
    local d3 = math.floor(n / 64) % 64
    local d4 = n % 64
    out[#out + 1] = string.sub(B64, d1 + 1, d1 + 1) .. string.sub(B64, d2 + 1, d2 + 1)
      .. (b and string.sub(B64, d3 + 1, d3 + 1) or '=')
      .. (c and string.sub(B64, d4 + 1, d4 + 1) or '=')
  end
  return table.concat(out)
end

local function stand_in(item, head_bytes, fresh_id)
  local head = string.sub(item, 1, head_bytes)
  local id = string.match(head, '^%s*{%s*"id"%s*:%s*"([^"\\]*)"')
  local fresh = false
  if not id or #id < 1 or #id > 200 or string.find(id, '[^\32-\126]') then
    if not fresh_id then
      return nil
    end
    id, fresh = fresh_id, true
  end
  local kept
  local bad, cut_short = utf8_error(head)
  if not bad then
    kept = '"raw_head":' .. cjson.encode(head)
  elseif cut_short then
    kept = '"raw_head":' .. cjson.encode(string.sub(head, 1, bad - 1))
  else
    kept = '"raw_head_base64":"' .. base64(head) .. '"'
  end
  return '{"id":' .. cjson.encode(id) .. ',"payload":null,"attempt":0,"raw_size":'
    .. string.format('%d', #item) .. ',' .. kept .. '}', fresh
end
