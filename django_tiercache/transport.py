"""How the query tier talks to its cache: one round trip to read, one to write.

With django-redis the read is a small Lua script: the entry, the version tokens and, when the
entry is not fresh and valid (checked in Redis, from a plain header before the pickle), the
single-flight lock, atomically. So is the write: the entry, the lock released, new version tokens
only where still absent. Any other Django cache gets the same semantics through
``get_many``/``add``/``set``/``delete``, in more round trips.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from django.core.cache import BaseCache
from django.core.cache.backends.base import default_key_func
from django_redis.compressors.identity import IdentityCompressor
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


class Entry(NamedTuple):
    """What the cache stores: the key tags, their tokens when computed, freshness, the value."""

    tags: tuple[str, ...]
    versions: tuple[int, ...]
    fresh_until: float
    value: Any


# The entry is stored behind a plain header, "<fresh until, ms> <token>,<token>...\n", so that
# the read script can tell a fresh, valid entry from one to recompute without unpickling it.
# KEYS: entry, version keys..., lock; ARGV: lock ttl, now (ms).
# Returns the entry (false when its tokens are not the current ones, 0 when it is not an entry),
# the current tokens, and whether the lock was taken: tried when the entry is not fresh and valid.
_READ = """
local n = #KEYS - 1
local values = redis.call('MGET', unpack(KEYS, 1, n))
local entry = values[1]
local fresh = false
if entry then
  local stop = string.find(entry, '\\n', 1, true)
  local space = stop and string.find(entry, ' ', 1, true)
  local fresh_until = space and space < stop and tonumber(string.sub(entry, 1, space - 1))
  if not fresh_until then
    values[1] = 0  -- not an entry of ours
  else
    local tokens = {}
    for i = 2, n do tokens[i - 1] = values[i] or '-' end
    if string.sub(entry, space + 1, stop - 1) == table.concat(tokens, ',') then
      fresh = fresh_until > tonumber(ARGV[2])
    else
      values[1] = false  -- outdated
    end
  end
end
local locked = 0
if not fresh then
  if redis.call('SET', KEYS[#KEYS], '1', 'NX', 'EX', ARGV[1]) then
    locked = 1
  end
end
values[#values + 1] = locked
return values
"""

# KEYS: entry, lock (or ""), new version keys...; ARGV: entry, px, version ttl, tokens...
_WRITE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if KEYS[2] ~= '' then redis.call('DEL', KEYS[2]) end
for i = 3, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'EX', ARGV[3])
end
return 1
"""


# Lua source -> its SHA-1, as EVALSHA names it.
_SHAS = {
    source: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    for source in (_READ, _WRITE)
}


def is_fresh(entry: Any, current: Sequence[int | None]) -> bool:
    """Whether ``entry`` may be served: computed with the ``current`` tokens, not expired."""
    return (
        isinstance(entry, Entry)
        and entry.versions == tuple(current)
        and time.time() < entry.fresh_until
    )


class Transport:
    """The generic implementation, for any Django cache backend."""

    #: Whether one instance may serve every thread (else one per thread's cache object).
    shared = False

    def __init__(self, cache: BaseCache) -> None:
        self.cache = cache

    def read(
        self, entry_key: str, version_keys: Sequence[str], lock_key: str | None, lock_ttl: int
    ) -> tuple[Any, list[int | None], bool]:
        """The entry (None if missing, :data:`GARBAGE` if unreadable), each version token (or
        None), and whether ``lock_key`` was taken: tried, when given, if the entry is not fresh.
        With the lock taken, the values are those seen once it was taken.
        """
        keys = [entry_key, *version_keys]
        found = self.cache.get_many(keys)
        if (
            lock_key is not None
            and not is_fresh(found.get(entry_key), _tokens(found, keys))
            and self.cache.add(lock_key, 1, lock_ttl)
        ):
            found = self.cache.get_many(keys)
            return found.get(entry_key), _tokens(found, keys), True
        return found.get(entry_key), _tokens(found, keys), False

    def unlock(self, lock_key: str) -> None:
        self.cache.delete(lock_key)

    def write(
        self,
        entry_key: str,
        entry: Entry,
        ttl: float,
        new_versions: Mapping[str, int],
        version_ttl: int,
        unlock_key: str | None,
    ) -> None:
        """Store the entry; create version tokens only where none exists yet; release the lock."""
        for key, token in new_versions.items():
            self.cache.add(key, token, version_ttl)
        self.cache.set(entry_key, entry, ttl)
        if unlock_key is not None:
            self.cache.delete(unlock_key)


#: What :meth:`Transport.read` returns for an entry it cannot read (a miss, counted as an error).
GARBAGE = object()


class DjangoRedisTransport(Transport):
    """django-redis: a Lua script to read (validity checked in Redis), one to write."""

    atomic = shared = True

    def __init__(self, cache: BaseCache) -> None:
        super().__init__(cache)
        self.client: Any = cache.client  # type: ignore[attr-defined]
        # Django's default key function, computed once instead of per key.
        self._prefix = (
            f"{cache.key_prefix}:{cache.version}:" if cache.key_func is default_key_func else None
        )
        compressor = getattr(self.client, "_compressor", None)
        serializer = getattr(self.client, "_serializer", None)
        if type(compressor) is IdentityCompressor and serializer is not None:
            self._loads = serializer.loads  # skip django-redis' int and decompression attempts
        else:
            self._loads = self.client.decode

    def _redis(self) -> Any:
        return self.client.get_client(write=True)

    @staticmethod
    def _command(redis: Any, *args: Any) -> Any:
        """Send one command on a pooled connection and read its reply.

        What ``redis.execute_command`` does, minus its per-command machinery (events, response
        callbacks): a third of a cache hit's cost. A connection the server closed is reopened
        and the command sent once more, as redis-py's default retry does; a timeout is final.
        """
        pool = redis.connection_pool
        connection = pool.get_connection()
        try:
            try:
                connection.send_command(*args)
                return connection.read_response()
            except RedisConnectionError:
                connection.disconnect()
                connection.send_command(*args)
                return connection.read_response()
        except ResponseError:
            raise  # the reply was read whole: the connection is fine
        except BaseException:
            connection.disconnect()  # a reply may be in flight: never hand it to the next user
            raise
        finally:
            pool.release(connection)

    def _run(self, redis: Any, script: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """EVALSHA ``script``, loading it first where Redis does not know it yet."""
        sha = _SHAS[script]
        try:
            return self._command(redis, "EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            redis.script_load(script)
            return self._command(redis, "EVALSHA", sha, len(keys), *keys, *args)

    def _key(self, key: str) -> Any:
        return self._prefix + key if self._prefix is not None else self.client.make_key(key)

    def read(
        self, entry_key: str, version_keys: Sequence[str], lock_key: str | None, lock_ttl: int
    ) -> tuple[Any, list[int | None], bool]:
        redis = self._redis()
        keys = [self._key(entry_key), *map(self._key, version_keys)]
        if lock_key is None:
            values = [*self._command(redis, "MGET", *keys), 0]
        else:
            keys.append(self._key(lock_key))
            now = int(time.time() * 1000)
            values = self._run(redis, _READ, keys, (lock_ttl, now))
        return self._entry(values[0]), [_token(v) for v in values[1:-1]], bool(values[-1])

    def _entry(self, raw: bytes | int | None) -> Any:
        if not isinstance(raw, bytes):  # missing or outdated (None), not an entry (0)
            return None if raw is None else GARBAGE
        stop = raw.find(b"\n")
        try:
            return self._loads(raw[stop + 1 :]) if stop >= 0 else GARBAGE
        except Exception:
            return GARBAGE

    def write(
        self,
        entry_key: str,
        entry: Entry,
        ttl: float,
        new_versions: Mapping[str, int],
        version_ttl: int,
        unlock_key: str | None,
    ) -> None:
        encode = self.client.encode
        header = f"{int(entry.fresh_until * 1000)} {','.join(map(str, entry.versions))}\n"
        keys = [self._key(entry_key), self._key(unlock_key) if unlock_key else ""]
        args = [header.encode() + encode(entry), max(1, int(ttl * 1000)), version_ttl]
        for key, token in new_versions.items():
            keys.append(self._key(key))
            args.append(token)
        self._run(self._redis(), _WRITE, keys, args)


def _tokens(found: Mapping[str, Any], keys: Sequence[str]) -> list[int | None]:
    return [found.get(key) for key in keys[1:]]


def _token(raw: bytes | None) -> int | None:
    """A version token as Redis returned it (django-redis stores integers as digits)."""
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None  # not ours: an entry never matches it


def transport_for(cache: BaseCache) -> Transport:
    client = getattr(cache, "client", None)
    if client is not None and hasattr(client, "get_client") and hasattr(client, "decode"):
        return DjangoRedisTransport(cache)
    return Transport(cache)
