-- The query tier's store: an entry, under the version tokens of its tags, in one atomic step.
--
-- KEYS: the entry, the lock, the version key of each tag...
-- ARGV: reference (µs, from read.lua, or ''), entry TTL (ms), fresh until (ms), token TTL (s),
--       release the lock ('1'/'0'), the encoded value, then each tag's token as read before the database ('' when
--       not read then: a row key found in the result, or a tag that had no token).
--
-- A token not read before the database is taken now. Absent, it is created (no invalidation
-- happened since the read). Present, it is used only if older than the reference: tokens are
-- the server's clock when invalidated (invalidate.lua), after the commit; the reference is the
-- clock at the read that preceded the database (read.lua). A commit the database read did not
-- see came after that read, so its token is not older: the store is refused.
-- The entry is written behind a plain header, "<fresh until, ms> <token>,...\n".
-- Returns 1 when stored, 0 when refused; the lock is released either way.

if redis.replicate_commands then redis.replicate_commands() end
local n = #KEYS - 2
local tokens = {}
for i = 1, n do
  local token = ARGV[6 + i]
  if token == '' then
    token = redis.call('GET', KEYS[2 + i])
    if not token then
      local now = redis.call('TIME')
      token = now[1] .. string.format('%06d', tonumber(now[2]))
      redis.call('SET', KEYS[2 + i], token, 'EX', ARGV[4])
    elseif ARGV[1] == '' or not (tonumber(token) and tonumber(token) < tonumber(ARGV[1])) then
      if ARGV[5] == '1' then redis.call('DEL', KEYS[2]) end
      return 0
    end
  end
  tokens[i] = token
end
local header = ARGV[3] .. ' ' .. table.concat(tokens, ',') .. '\n'
redis.call('SET', KEYS[1], header .. ARGV[6], 'PX', ARGV[2])
if ARGV[5] == '1' then redis.call('DEL', KEYS[2]) end
return 1
