-- The query tier's invalidation: each key gets a new version token, the server's clock in µs
-- (after the commit, so later than the reference of any read that could have missed it; see
-- store.lua), and always above its previous token.
--
-- KEYS: version keys.   ARGV: token TTL (s).

if redis.replicate_commands then redis.replicate_commands() end
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
for _, key in ipairs(KEYS) do
  local token = clock
  local previous = tonumber(redis.call('GET', key))
  if previous and previous >= token and previous < 2 ^ 52 then
    token = previous + 1
  end
  redis.call('SET', key, string.format('%.0f', token), 'EX', ARGV[1])
end
return #KEYS
