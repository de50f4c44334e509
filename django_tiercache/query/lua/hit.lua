-- The query tier's plain read: the entry and the current version tokens of its tags, compared
-- here (as read.lua does), so that a hit sends back the entry alone, not one reply per tag.
--
-- KEYS: the entry, the version key of each tag...   ARGV: now (ms).
--
-- Returns the entry (its header included, see read.lua) when it is fresh and valid. Otherwise
-- {entry, token...}: entry is 0 when it is not an entry of ours, else nil (missing, outdated or
-- expired: a caller that may serve it stale reads it again with read.lua, taking the lock).

local values = redis.call('MGET', unpack(KEYS))
local entry = values[1]
if entry then
  local stop = string.find(entry, '\n', 1, true)
  local space = stop and string.find(entry, ' ', 1, true)
  local fresh_until = space and space < stop and tonumber(string.sub(entry, 1, space - 1))
  if not fresh_until then
    values[1] = 0
  else
    values[1] = false
    local tokens = {}
    for i = 2, #KEYS do tokens[i - 1] = values[i] or '-' end
    if fresh_until > tonumber(ARGV[1])
      and string.sub(entry, space + 1, stop - 1) == table.concat(tokens, ',') then
      return entry
    end
  end
end
return values
