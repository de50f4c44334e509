"""How the query tier talks to its cache: one round trip to read, one to write.

With django-redis the read is a small Lua script (the entry, the version tokens and, when the
entry is missing, the single-flight lock, atomically) and so is the write (the entry, the lock
released, new version tokens only where still absent). Any other Django cache gets the
same semantics through ``get_many``/``add``/``set``/``delete``, in more round trips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.core.cache import BaseCache
from django.core.cache.backends.base import default_key_func

_READ = """
local values = redis.call('MGET', unpack(KEYS, 1, #KEYS - 1))
local locked = 0
if ARGV[2] == '1' or not values[1] then
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


class Transport:
    """The generic implementation, for any Django cache backend."""

    def __init__(self, cache: BaseCache) -> None:
        self.cache = cache

    def read(
        self,
        entry_key: str,
        version_keys: Sequence[str],
        lock_key: str | None,
        lock_ttl: int,
        force: bool = False,
    ) -> tuple[Any, list[Any], bool]:
        """The entry (or None), each version token (or None), and whether ``lock_key`` was
        taken: tried when given and the entry is missing, or always with ``force``. With the
        lock taken, the values are those seen when it was taken."""
        locked = False
        if lock_key is not None and force:
            locked = bool(self.cache.add(lock_key, 1, lock_ttl))
        found = self.cache.get_many([entry_key, *version_keys])
        entry = found.get(entry_key)
        if lock_key is not None and not force and entry is None:
            locked = bool(self.cache.add(lock_key, 1, lock_ttl))
        return entry, [found.get(key) for key in version_keys], locked

    def unlock(self, lock_key: str) -> None:
        self.cache.delete(lock_key)

    def write(
        self,
        entry_key: str,
        entry: Any,
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


class DjangoRedisTransport(Transport):
    """django-redis: a Lua script to read, a pipeline to write."""

    def __init__(self, cache: BaseCache) -> None:
        super().__init__(cache)
        self.client: Any = cache.client  # type: ignore[attr-defined]
        self._scripts: dict[tuple[int, str], Any] = {}
        # Django's default key function, computed once instead of per key.
        self._prefix = (
            f"{cache.key_prefix}:{cache.version}:" if cache.key_func is default_key_func else None
        )

    def _redis(self) -> Any:
        return self.client.get_client(write=True)

    def _script(self, source: str) -> Any:
        """``source`` registered with this process's write client (EVALSHA, loaded on demand)."""
        redis = self._redis()
        script = self._scripts.get((id(redis), source))
        if script is None:
            script = self._scripts[(id(redis), source)] = redis.register_script(source)
        return script

    def _key(self, key: str) -> Any:
        return self._prefix + key if self._prefix is not None else self.client.make_key(key)

    def read(
        self,
        entry_key: str,
        version_keys: Sequence[str],
        lock_key: str | None,
        lock_ttl: int,
        force: bool = False,
    ) -> tuple[Any, list[Any], bool]:
        redis = self._redis()
        keys = [self._key(entry_key), *map(self._key, version_keys)]
        if lock_key is None:
            values = [*redis.mget(keys), 0]
        else:
            keys.append(self._key(lock_key))
            values = self._script(_READ)(keys=keys, args=[lock_ttl, int(force)], client=redis)
        decode = self.client.decode
        entry = decode(values[0]) if values[0] else None
        return entry, [decode(v) if v else None for v in values[1:-1]], bool(values[-1])

    def write(
        self,
        entry_key: str,
        entry: Any,
        ttl: float,
        new_versions: Mapping[str, int],
        version_ttl: int,
        unlock_key: str | None,
    ) -> None:
        encode = self.client.encode
        keys = [self._key(entry_key), self._key(unlock_key) if unlock_key else ""]
        args = [encode(entry), max(1, int(ttl * 1000)), version_ttl]
        for key, token in new_versions.items():
            keys.append(self._key(key))
            args.append(encode(token))
        self._script(_WRITE)(keys=keys, args=args)


def transport_for(cache: BaseCache) -> Transport:
    client = getattr(cache, "client", None)
    if client is not None and hasattr(client, "get_client") and hasattr(client, "decode"):
        return DjangoRedisTransport(cache)
    return Transport(cache)
