"""How the query tier talks to its cache.

With django-redis (:class:`DjangoRedisTransport`) a hit is one ``MGET`` of the entry and its
version tokens. The locking read is a small Lua script: the entry, the tokens and, when the entry
is not fresh and valid (checked in Redis, from a plain header before the pickle), the
single-flight lock, atomically. The write (the entry, new version tokens only where still absent,
the lock released) is plain commands sent without waiting for their replies, on the thread's own
connection. Any other Django cache (:class:`Transport`) gets the same semantics through
``get_many``/``add``/``set``/``delete``, in more round trips.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from django.core.cache import BaseCache
from django.core.cache.backends.base import default_key_func
from django_redis.compressors.identity import IdentityCompressor
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from django_tiercache import stats


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

_READ_SHA = hashlib.sha1(_READ.encode(), usedforsecurity=False).hexdigest()


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

    def invalidate(self, version_keys: Sequence[str], token: int, ttl: int) -> None:
        """Give every key in ``version_keys`` the version ``token``; waits for the reply."""
        self.cache.set_many(dict.fromkeys(version_keys, token), ttl)

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


class _Line(threading.local):
    """This thread's own connection to Redis and how many replies on it are still unread."""

    def __init__(self) -> None:
        self.connection: Any = None
        self.unread = 0


class DjangoRedisTransport(Transport):
    """django-redis, over one connection per thread: a Lua script for the locking read (validity
    checked in Redis), plain commands to write, sent without waiting for their replies.

    Each thread talks to Redis over a connection of its own (outside django-redis' pool, closed
    when the thread ends), so its commands reach Redis in the order it sent them. That lets a
    write go out without waiting: its reply is read before the reply of the thread's next
    command, and that next command, sent later on the same connection, already sees the write.
    A cache miss so costs one round trip (the read), not two.
    """

    shared = True

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
        self._line = _Line()

    def _connection(self) -> Any:
        line = self._line
        connection = line.connection
        if connection is None or connection.pid != os.getpid():  # new thread, or forked
            pool = self.client.get_client(write=True).connection_pool
            connection = line.connection = pool.connection_class(**pool.connection_kwargs)
            line.unread = 0
        return connection

    def _exchange(self, *commands: tuple[Any, ...], wait: bool = True) -> list[Any]:
        """Send ``commands`` in one write and read their replies (none without ``wait``: they
        are read before the next exchange's). A connection the server closed is replaced and
        the commands sent once more, as redis-py's default retry does; a timeout is final."""
        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.send_packed_command([_pack(commands)])
                unread, self._line.unread = self._line.unread, 0
                for _ in range(unread):
                    self._read_deferred(connection)
                if not wait:
                    self._line.unread = len(commands)
                    return []
                return [connection.read_response() for _ in commands]
            except BaseException as exc:
                # Replies may be in flight or unread: this connection is out of step for good.
                connection.disconnect()
                self._line.connection = None
                if attempt == 2 or not isinstance(exc, RedisConnectionError):
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _read_deferred(connection: Any) -> None:
        try:
            connection.read_response()
        except ResponseError:  # read whole: the connection is still in step
            stats.incr("query_errors")  # an entry not stored: a later read recomputes it

    def _key(self, key: str) -> Any:
        return self._prefix + key if self._prefix is not None else self.client.make_key(key)

    def read(
        self, entry_key: str, version_keys: Sequence[str], lock_key: str | None, lock_ttl: int
    ) -> tuple[Any, list[int | None], bool]:
        keys = [self._key(entry_key), *map(self._key, version_keys)]
        if lock_key is None:
            (values,) = self._exchange(("MGET", *keys))
            values.append(0)
        else:
            keys.append(self._key(lock_key))
            now = int(time.time() * 1000)
            command = ("EVALSHA", _READ_SHA, len(keys), *keys, lock_ttl, now)
            try:
                (values,) = self._exchange(command)
            except NoScriptError:  # a Redis that has not seen the script yet
                self._exchange(("SCRIPT", "LOAD", _READ))
                (values,) = self._exchange(command)
        return self._entry(values[0]), [_token(v) for v in values[1:-1]], bool(values[-1])

    def _entry(self, raw: bytes | int | None) -> Any:
        if not isinstance(raw, bytes):  # missing or outdated (None), not an entry (0)
            return None if raw is None else GARBAGE
        stop = raw.find(b"\n")
        try:
            return self._loads(raw[stop + 1 :]) if stop >= 0 else GARBAGE
        except Exception:
            return GARBAGE

    def unlock(self, lock_key: str) -> None:
        self._exchange(("DEL", self._key(lock_key)))

    def write(
        self,
        entry_key: str,
        entry: Entry,
        ttl: float,
        new_versions: Mapping[str, int],
        version_ttl: int,
        unlock_key: str | None,
    ) -> None:
        # Plain commands, in order on this connection: a reader in between sees the entry without
        # its new tokens (a miss) or the lock still held (it waits), never a wrong value.
        header = f"{int(entry.fresh_until * 1000)} {','.join(map(str, entry.versions))}\n"
        value = header.encode() + self.client.encode(entry)
        commands: list[tuple[Any, ...]] = [
            ("SET", self._key(entry_key), value, "PX", max(1, int(ttl * 1000)))
        ]
        for key, token in new_versions.items():
            commands.append(("SET", self._key(key), token, "NX", "EX", version_ttl))
        if unlock_key is not None:
            commands.append(("DEL", self._key(unlock_key)))
        self._exchange(*commands, wait=False)

    def invalidate(self, version_keys: Sequence[str], token: int, ttl: int) -> None:
        self._exchange(*(("SET", self._key(key), token, "EX", ttl) for key in version_keys))


def _pack(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """``commands`` in the Redis protocol (arguments: bytes, str or int), in one buffer."""
    parts: list[bytes] = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for argument in command:
            if not isinstance(argument, bytes):
                argument = str(argument).encode()
            parts += (b"$%d\r\n" % len(argument), argument, b"\r\n")
    return b"".join(parts)


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
