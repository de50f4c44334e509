-- The query tier's locking read: an entry, the current version tokens of its tags and, when the
-- entry is not fresh and valid, the single-flight lock, all in one atomic step.
--
-- KEYS: the entry, the version key of each tag..., the lock.   ARGV: lock TTL (s), now (ms).
--
-- An entry is stored behind a plain header, "<fresh until, ms> <token>,<token>...\n", so that
-- this script tells a fresh valid entry from one to recompute without unpickling it.
-- Returns {entry, token..., locked, reference}: entry is nil when missing or when its tokens are
-- not the current ones, 0 when it is not an entry of ours; locked is 1 when this call took the
-- lock; reference is the server's clock (µs) at this read, before the database is (store.lua).

-- TIME, then a write: Redis < 5 needs effects replication asked for (later ones always use it).
if redis.replicate_commands then redis.replicate_commands() end

local n = #KEYS - 1
local values = redis.call('MGET', unpack(KEYS, 1, n))
local entry = values[1]
local fresh = false
if entry then
  local stop = string.find(entry, '\n', 1, true)
  local space = stop and string.find(entry, ' ', 1, true)
  local fresh_until = space and space < stop and tonumber(string.sub(entry, 1, space - 1))
  if not fresh_until then
    values[1] = 0
  else
    local tokens = {}
    for i = 2, n do tokens[i - 1] = values[i] or '-' end
    if string.sub(entry, space + 1, stop - 1) == table.concat(tokens, ',') then
      fresh = fresh_until > tonumber(ARGV[2])
    else
      values[1] = false
    end
  end
end
local locked = 0
if not fresh and redis.call('SET', KEYS[#KEYS], '1', 'NX', 'EX', ARGV[1]) then
  locked = 1
end
values[#values + 1] = locked
local now = redis.call('TIME')
values[#values + 1] = now[1] .. string.format('%06d', tonumber(now[2]))
return values
