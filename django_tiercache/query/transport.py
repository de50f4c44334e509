"""How the query tier talks to its cache.

On Redis (:class:`RedisTransport`) everything goes through the configured cache's own redis-py
client to the primary, so its connection pool, Sentinel discovery, TLS, ACL, timeouts and retries
apply: a hit is one ``MGET`` of the entry and its version tokens; the locking read is a Lua
script (``lua/read.lua``, a redis-py ``Script``) that reads them and takes the single-flight lock
atomically; a write is one pipeline. Any other Django cache (:class:`Transport`) gets the same
semantics through ``get_many``/``add``/``set``/``delete``, in more round trips.

:class:`~django_tiercache.query.cluster.ClusterTransport` serves Redis Cluster (its own
key layout). :func:`transport_for` picks the transport by what the cache can do and refuses, with
:class:`UnsupportedCache`, a shape it cannot serve correctly (the ``tiercache.E009`` check
reports it at start-up).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.base import default_key_func
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.core.exceptions import ImproperlyConfigured

from django_tiercache.conf import tiercache_settings


class Entry(NamedTuple):
    """What the cache stores: the key tags, their tokens when computed, freshness, the value."""

    tags: tuple[str, ...]
    versions: tuple[int, ...]
    fresh_until: float
    value: Any


#: What :meth:`Transport.read` returns for an entry it cannot read (a miss, counted as an error).
GARBAGE = object()

_READ_SCRIPT = (Path(__file__).parent / "lua" / "read.lua").read_text()


class ReplicationError(Exception):
    """Fewer replicas than ``WAIT_FOR_REPLICAS`` confirmed an invalidation in time."""


class UnsupportedCache(ImproperlyConfigured):
    """The query-tier cache has a shape the query tier cannot serve correctly."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(f"{message} {hint}")
        self.message, self.hint = message, hint


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
        """Give every key in ``version_keys`` the version ``token``; raises unless all were set."""
        if self.cache.set_many(dict.fromkeys(version_keys, token), ttl):
            raise RuntimeError("the cache did not store every version token")

    def clear(self, prefix: str) -> None:
        """Delete every key starting with ``prefix``: here, a cache that cannot match keys,
        everything in it."""
        self.cache.clear()

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


class RedisTransport(Transport):
    """Redis through the cache's own redis-py client (``client``, connected to the primary).

    ``encode``/``decode`` turn an :class:`Entry` into bytes and back (django-redis' serializer
    and compressor, or pickle). Every call takes a connection from the client's pool and gives
    it back with every reply read; one instance serves every thread.
    """

    shared = True

    def __init__(
        self,
        cache: BaseCache,
        client: Any,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
    ) -> None:
        super().__init__(cache)
        self.client = client
        self._encode, self._decode = encode, decode
        self._read_script = client.register_script(_READ_SCRIPT)
        # Django's default key function, computed once instead of per key.
        self._prefix = (
            f"{cache.key_prefix}:{cache.version}:" if cache.key_func is default_key_func else None
        )

    def _key(self, key: str) -> str:
        return self._prefix + key if self._prefix is not None else self.cache.make_key(key)

    def read(
        self, entry_key: str, version_keys: Sequence[str], lock_key: str | None, lock_ttl: int
    ) -> tuple[Any, list[int | None], bool]:
        keys = [self._key(entry_key), *map(self._key, version_keys)]
        if lock_key is None:
            values = [*self.client.mget(keys), 0]
        else:
            now = int(time.time() * 1000)
            values = self._read_script(keys=[*keys, self._key(lock_key)], args=[lock_ttl, now])
        return self._entry(values[0]), [_token(v) for v in values[1:-1]], bool(values[-1])

    def _entry(self, raw: bytes | int | None) -> Any:
        if not isinstance(raw, bytes):  # missing or outdated (None), not an entry (0)
            return None if raw is None else GARBAGE
        stop = raw.find(b"\n")
        try:
            return self._decode(raw[stop + 1 :]) if stop >= 0 else GARBAGE
        except Exception:
            return GARBAGE

    def unlock(self, lock_key: str) -> None:
        self.client.delete(self._key(lock_key))

    def write(
        self,
        entry_key: str,
        entry: Entry,
        ttl: float,
        new_versions: Mapping[str, int],
        version_ttl: int,
        unlock_key: str | None,
    ) -> None:
        # In this order: a reader in between sees the entry without its new tokens (a miss) or
        # the lock still held (it waits), never a wrong value.
        header = f"{int(entry.fresh_until * 1000)} {','.join(map(str, entry.versions))}\n"
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self._key(entry_key), header.encode() + self._encode(entry), px=_ms(ttl))
            for key, token in new_versions.items():
                pipe.set(self._key(key), token, nx=True, ex=version_ttl)
            if unlock_key is not None:
                pipe.delete(self._key(unlock_key))
            pipe.execute()

    def clear(self, prefix: str) -> None:
        """Delete this tier's keys only (``SCAN`` on the primary, ``UNLINK`` in batches): never
        the rest of the cache, as Django's ``RedisCache.clear()`` (``FLUSHDB``) would."""
        batch: list[Any] = []
        for key in self.client.scan_iter(match=f"{_glob_escape(self._key(prefix))}*", count=1000):
            batch.append(key)
            if len(batch) == 500:
                self.client.unlink(*batch)
                batch.clear()
        if batch:
            self.client.unlink(*batch)

    def invalidate(self, version_keys: Sequence[str], token: int, ttl: int) -> None:
        """Set the tokens; with ``WAIT_FOR_REPLICAS``, raise unless that many replicas have
        them within ``WAIT_TIMEOUT`` (a primary that lost its replicas, e.g. one that a
        failover left behind, would otherwise acknowledge writes that are then lost)."""
        replicas = int(tiercache_settings.WAIT_FOR_REPLICAS)
        with self.client.pipeline(transaction=False) as pipe:
            for key in version_keys:
                pipe.set(self._key(key), token, ex=ttl)
            if replicas:
                pipe.wait(replicas, _ms(float(tiercache_settings.WAIT_TIMEOUT)))
            replies = pipe.execute()  # raises on any error reply, an OOM included
        if replicas and replies[-1] < replicas:
            raise ReplicationError(f"{replies[-1]} of {replicas} replica(s) confirmed the write")


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _tokens(found: Mapping[str, Any], keys: Sequence[str]) -> list[int | None]:
    return [found.get(key) for key in keys[1:]]


def _token(raw: bytes | None) -> int | None:
    """A version token as Redis returned it (stored as digits)."""
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None  # not ours: an entry never matches it


def _pickle(value: Any) -> bytes:
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def transport_for(alias: str) -> Transport:
    """The transport for the cache ``alias``, chosen by what the cache can do.

    Raises :class:`UnsupportedCache` for a cache that is Redis but not servable correctly.
    """
    cache: Any = caches[alias]
    own = getattr(cache, "query_transport", None)  # a cache that brings its own (a cluster)
    if callable(own):
        return own()  # type: ignore[no-any-return]
    if isinstance(cache, RedisCache):
        return RedisTransport(cache, _django_primary(alias), _pickle, pickle.loads)
    client = getattr(cache, "client", None)
    if client is None or not hasattr(client, "get_client"):
        return Transport(cache)
    _refuse_shards(client)
    primary = client.get_client(write=True)
    _refuse_cluster(primary)
    return RedisTransport(cache, primary, client.encode, _decoder(alias, client))


#: django-redis' default serializer and compressor (its ``OPTIONS`` when they are not given).
_DJANGO_REDIS_PICKLE = {
    "SERIALIZER": "django_redis.serializers.pickle.PickleSerializer",
    "COMPRESSOR": "django_redis.compressors.identity.IdentityCompressor",
}


def _decoder(alias: str, client: Any) -> Callable[[bytes], Any]:
    """How to decode an entry of django-redis' ``client``: ``pickle.loads`` when the cache's
    ``OPTIONS`` keep the default serializer and compressor, else ``client.decode``.

    ``client.decode`` first tries ``int(value)``, which raises on every entry (its message holds
    the entry's repr): about a third of decoding a small entry.
    """
    config: dict[str, Any] = settings.CACHES[alias]
    options: dict[str, Any] = config.get("OPTIONS") or {}
    if all(options.get(name, path) == path for name, path in _DJANGO_REDIS_PICKLE.items()):
        return pickle.loads
    decode: Callable[[bytes], Any] = client.decode
    return decode


def _django_primary(alias: str) -> Any:
    """A client of the first server of Django's RedisCache ``alias``: its primary, where it
    writes (Django gives no public access to its own client, so this is a pool of ours, built
    from the same ``LOCATION`` and ``OPTIONS``)."""
    config: dict[str, Any] = settings.CACHES[alias]
    location = config["LOCATION"]
    servers = location.replace(";", ",").split(",") if isinstance(location, str) else location
    return RedisCacheClient([servers[0]], **config.get("OPTIONS", {})).get_client(write=True)


def _refuse_shards(client: Any) -> None:
    from django_redis.client import ShardClient

    if isinstance(client, ShardClient):
        raise UnsupportedCache(
            "The query-tier cache uses django-redis' ShardClient, which the query tier does "
            "not support: an entry and its version tokens can live on different servers, "
            "with no atomic read across them.",
            "Use DefaultClient (one primary, optional replicas) or SentinelClient for "
            "TIERCACHE['CACHE_ALIAS'], or give the query tier a cache of its own.",
        )


def _refuse_cluster(primary: Any) -> None:
    from redis.cluster import RedisCluster

    if isinstance(primary, RedisCluster):
        raise UnsupportedCache(
            "The query-tier cache is a Redis Cluster client behind django-redis, which routes "
            "neither the query tier's script nor its multi-key reads by slot.",
            "Use BACKEND 'django_tiercache.query.cluster.RedisClusterCache' for a Redis "
            "Cluster (see 'Deployment shapes' in the docs).",
        )
