-- The query tier's locking read on Redis Cluster: the entry and, when it is not fresh and valid
-- against the version tokens the caller has just read (from their own slots), the single-flight
-- lock, in one atomic step. The entry and its lock share a slot (a hash tag of the entry's name).
--
-- KEYS: the entry, the lock.   ARGV: lock TTL (s), now (ms), the tokens read ("t1,t2", "-" for
-- a missing one).
-- Returns {entry, locked}: entry is nil when missing or when its tokens are not the given ones,
-- 0 when it is not an entry of ours; locked is 1 when this call took the lock.

local entry = redis.call('GET', KEYS[1])
local fresh = false
if entry then
  local stop = string.find(entry, '\n', 1, true)
  local space = stop and string.find(entry, ' ', 1, true)
  local fresh_until = space and space < stop and tonumber(string.sub(entry, 1, space - 1))
  if not fresh_until then
    entry = 0
  elseif string.sub(entry, space + 1, stop - 1) == ARGV[3] then
    fresh = fresh_until > tonumber(ARGV[2])
  else
    entry = false
  end
end
local locked = 0
if not fresh and redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  locked = 1
end
return {entry, locked}
