"""How the query tier talks to its cache.

On Redis (:class:`RedisTransport`) everything goes through the configured cache's own redis-py
client to the primary, so its connection pool, Sentinel discovery, TLS, ACL, timeouts and retries
apply: a hit is one round trip, an ``MGET`` of the entry and its version tokens or, for an entry
with more tags, ``lua/hit.lua``, which compares the tokens on the server and sends back the entry
alone; the locking read, the store and the invalidation are Lua scripts too (``lua/*.lua``,
redis-py ``Script`` objects), one round trip each. Version tokens are the server's clock at
invalidation, so a store can tell a token set while the database was read from an older one.
Any other Django cache (:class:`Transport`) gets the same semantics through
``get_many``/``add``/``set``/``delete``, in more round trips, and without a clock: a token it
did not read before the database refuses the store.

:class:`~django_tiercache.query.cluster.ClusterTransport` serves Redis Cluster (its own
key layout). :func:`transport_for` picks the transport by what the cache can do and refuses, with
:class:`UnsupportedCache`, a shape it cannot serve correctly (the ``tiercache.E009`` check
reports it at start-up).
"""

from __future__ import annotations

import contextlib
import pickle
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import redis
from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.base import default_key_func
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from redis.connection import DefaultParser
from redis.exceptions import RedisError
from redis.utils import HIREDIS_AVAILABLE

from django_tiercache.conf import tiercache_settings
from django_tiercache.query import rows
from django_tiercache.query.restarts import RunGuard


class Entry(NamedTuple):
    """What the cache stores: the key tags, their tokens when computed, freshness, the value."""

    tags: tuple[str, ...]
    versions: tuple[int, ...]
    fresh_until: float
    value: Any


#: What :meth:`Transport.read` returns for an entry it cannot read (a miss, counted as an error).
GARBAGE = object()

_LUA = Path(__file__).parent / "lua"
_HIT_SCRIPT, _READ_SCRIPT, _STORE_SCRIPT, _INVALIDATE_SCRIPT = (
    (_LUA / f"{name}.lua").read_text() for name in ("hit", "read", "store", "invalidate")
)
#: Up to this many keys (the entry's and its tags'), a read is a plain ``MGET``; beyond, the
#: tokens are compared by ``lua/hit.lua`` and a hit brings back the entry alone. Where the two
#: cost the same with redis-py's Python parser: the script costs Redis about 220k instructions
#: more, the client saves about 16k per tag it does not parse. With the hiredis parser, which
#: parses the tokens in C, a plain ``MGET`` costs less at any size (see
#: :func:`_mget_max_keys`).
MGET_MAX_KEYS = 21
#: How many tuples of version keys :class:`RedisTransport` remembers the encoded names of.
_NAMES_SIZE = 4096


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
    ) -> tuple[Any, Sequence[int | None], bool, int | None]:
        """The entry (None if missing, :data:`GARBAGE` if unreadable), each version token (or
        None), whether ``lock_key`` was taken (tried, when given, if the entry is not fresh),
        and the reference a later :meth:`write` compares tokens with (None: none, here).
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
            return found.get(entry_key), _tokens(found, keys), True, None
        return found.get(entry_key), _tokens(found, keys), False, None

    def unlock(self, lock_key: str) -> None:
        self.cache.delete(lock_key)

    def invalidate(self, version_keys: Sequence[str], ttl: int) -> None:
        """Give every key in ``version_keys`` a new version token; raises unless all were set."""
        if self.cache.set_many(dict.fromkeys(version_keys, secrets.randbits(62)), ttl):
            raise RuntimeError("the cache did not store every version token")

    def clear(self, prefix: str) -> None:
        """Delete every key starting with ``prefix``: here, a cache that cannot match keys,
        everything in it."""
        self.cache.clear()

    def guard_restarts(self, prefix: str) -> None:
        """Drop the keys starting with ``prefix`` whenever the server restarted with old data
        (see :mod:`.restarts`); here, a cache that has no such notion, nothing."""

    def check_restart(self) -> None:
        """Look now for a restart that :meth:`guard_restarts` has not seen."""

    def write(
        self,
        entry_key: str,
        entry: Entry,
        ttl: float,
        tokens: Mapping[str, int | None],
        reference: int | None,
        version_ttl: int,
        unlock_key: str | None,
    ) -> bool:
        """Store ``entry`` under ``tokens`` (version key -> token read before the database, in
        the entry's tag order; None: not read then) and release the lock; True if stored.

        A token not read before is taken now: absent, it is created (only where still absent);
        present, the store is refused unless it is older than ``reference`` (what
        :meth:`read` returned before the database was read). Here there is no reference: any
        such token refuses.
        """
        versions: list[int] = []
        for key, token in tokens.items():
            if token is None:
                if self.cache.get(key) is not None:
                    versions.clear()
                    break
                token = secrets.randbits(62)
                self.cache.add(key, token, version_ttl)  # if this fails the entry never matches
            versions.append(token)
        stored = len(versions) == len(tokens)
        if stored:
            self.cache.set(entry_key, entry._replace(versions=tuple(versions)), ttl)
        if unlock_key is not None:
            self.cache.delete(unlock_key)
        return stored


class RedisTransport(Transport):
    """Redis through the cache's own redis-py client (``client``, connected to the primary).

    ``encode``/``decode`` turn an :class:`Entry` into bytes and back (django-redis' serializer
    and compressor, or pickle); with ``packs`` (they pickle), a list of rows is stored as one
    table (:mod:`.rows`). Every call takes a connection from the client's pool and gives
    it back with every reply read; one instance serves every thread.
    """

    shared = True
    #: The restart check of the client's pool (none until :meth:`guard_restarts`, or without a
    #: pool of one server: Redis Cluster).
    _guard: RunGuard | None = None

    def __init__(
        self,
        cache: BaseCache,
        client: Any,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
        *,
        packs: bool = False,
    ) -> None:
        super().__init__(cache)
        self.client = client
        self._encode, self._decode, self._packs = encode, decode, packs
        self._hit_script = client.register_script(_HIT_SCRIPT)
        self._read_script = client.register_script(_READ_SCRIPT)
        self._store_script = client.register_script(_STORE_SCRIPT)
        self._invalidate_script = client.register_script(_INVALIDATE_SCRIPT)
        # Django's default key function, computed once instead of per key.
        self._prefix = (
            f"{cache.key_prefix}:{cache.version}:" if cache.key_func is default_key_func else None
        )
        self._names: dict[tuple[str, ...], list[bytes]] = {}
        self._encoder = client.get_encoder()
        self._mget_max = _mget_max_keys(client)

    def _key(self, key: str) -> str:
        return self._prefix + key if self._prefix is not None else self.cache.make_key(key)

    def _version_names(self, version_keys: Sequence[str]) -> list[bytes]:
        """The Redis names of ``version_keys``, encoded; remembered for a tuple (the service
        passes the same one for the same tags)."""
        known = self._names
        names = known.get(version_keys) if isinstance(version_keys, tuple) else None
        if names is None:
            encode = self._encoder.encode
            names = [encode(self._key(key)) for key in version_keys]
            if isinstance(version_keys, tuple):
                if len(known) >= _NAMES_SIZE:
                    known.clear()
                known[version_keys] = names
        return names

    def read(
        self, entry_key: str, version_keys: Sequence[str], lock_key: str | None, lock_ttl: int
    ) -> tuple[Any, Sequence[int | None], bool, int | None]:
        keys = [self._key(entry_key), *self._version_names(version_keys)]
        now = int(time.time() * 1000)
        if lock_key is not None:
            values = self._read_script(keys=[*keys, self._key(lock_key)], args=[lock_ttl, now])
        elif len(keys) <= self._mget_max:
            values = [*self.client.mget(keys), 0, None]
        else:
            values = self._hit_script(keys=keys, args=[now])
            if isinstance(values, bytes):  # fresh and valid: its header names the tokens
                entry = self._entry(values)
                if isinstance(entry, Entry):
                    return entry, entry.versions, False, None
                return entry, _header_tokens(values), False, None
            values = [*values, 0, None]
        tokens = [_token(v) for v in values[1:-2]]
        return self._entry(values[0]), tokens, bool(values[-2]), _token(values[-1])

    def _body(self, entry: Entry) -> bytes:
        """``entry`` encoded without its tokens (the header holds them, see store.lua)."""
        value = rows.pack(entry.value) if self._packs else entry.value
        return self._encode(entry._replace(versions=(), value=value))

    def _entry(self, raw: bytes | int | None) -> Any:
        """The entry behind its header, with the tokens the header names (store.lua)."""
        if not isinstance(raw, bytes):  # missing or outdated (None), not an entry (0)
            return None if raw is None else GARBAGE
        stop = raw.find(b"\n")
        try:
            tokens = raw[raw.index(b" ", 0, stop) + 1 : stop]
            versions = tuple(map(int, tokens.split(b","))) if tokens else ()
            return self._decode(raw[stop + 1 :])._replace(versions=versions)
        except Exception:
            return GARBAGE

    def unlock(self, lock_key: str) -> None:
        self.client.delete(self._key(lock_key))

    def write(
        self,
        entry_key: str,
        entry: Entry,
        ttl: float,
        tokens: Mapping[str, int | None],
        reference: int | None,
        version_ttl: int,
        unlock_key: str | None,
    ) -> bool:
        keys = [self._key(entry_key), self._key(unlock_key or entry_key)]
        args = [
            "" if reference is None else reference,
            _ms(ttl),
            int(entry.fresh_until * 1000),
            version_ttl,
            "0" if unlock_key is None else "1",
            self._body(entry),
        ]
        keys += map(self._key, tokens)
        args += ("" if token is None else token for token in tokens.values())
        return bool(self._store_script(keys=keys, args=args))

    def clear(self, prefix: str) -> None:
        """Delete this tier's keys only (``SCAN`` on the primary, ``UNLINK`` in batches): never
        the rest of the cache, as Django's ``RedisCache.clear()`` (``FLUSHDB``) would."""
        _unlink_matching(self.client, f"{_glob_escape(self._key(prefix))}*")

    def guard_restarts(self, prefix: str) -> None:
        """Every connection of the client's pool checks the server's ``run_id`` when it
        connects (:class:`.restarts.RunGuard`)."""
        pool = getattr(self.client, "connection_pool", None)
        if pool is None or not hasattr(pool, "update_connection_kwargs"):
            return
        self._guard = RunGuard.install(pool)
        self._guard.watch(self._key(f"{prefix}run"), f"{_glob_escape(self._key(prefix))}*")
        # Recorded now, while the tier holds nothing under this prefix: a later connection that
        # finds no record would otherwise drop what the tier stored meanwhile (locks included).
        with contextlib.suppress(RedisError):  # unreachable: every connection checks anyway
            self.check_restart()

    def check_restart(self) -> None:
        """Check one pooled connection now: one opened before :meth:`guard_restarts` was called
        reconnects without the check."""
        guard = self._guard
        if guard is not None:
            pool = self.client.connection_pool
            connection = pool.get_connection()
            try:
                guard.check(connection)
            finally:
                pool.release(connection)

    def invalidate(self, version_keys: Sequence[str], ttl: int) -> None:
        """Set the tokens (``lua/invalidate.lua``: the server's clock); with
        ``WAIT_FOR_REPLICAS``, raise unless that many replicas have them within
        ``WAIT_TIMEOUT`` (a primary that lost its replicas, e.g. one that a failover left
        behind, would otherwise acknowledge writes that are then lost)."""
        keys = [self._key(key) for key in version_keys]
        replicas = int(tiercache_settings.WAIT_FOR_REPLICAS)
        if not replicas:
            self._invalidate_script(keys=keys, args=[ttl])  # raises on any error, OOM included
            return
        # WAIT confirms the writes of its own connection: one pipeline keeps both on one.
        pipe = self.client.pipeline(transaction=False)
        self._invalidate_script(keys=keys, args=[ttl], client=pipe)
        pipe.wait(replicas, _ms(float(tiercache_settings.WAIT_TIMEOUT)))
        confirmed = pipe.execute()[-1]
        if confirmed < replicas:
            raise ReplicationError(f"{confirmed} of {replicas} replica(s) confirmed the write")


def _mget_max_keys(client: Any) -> float:
    """Up to how many keys a hit is a plain ``MGET`` (:data:`MGET_MAX_KEYS`): any number when
    the client's connections parse with hiredis, redis-py's default parser once hiredis is
    installed (``django-tiercache[hiredis]``)."""
    pool = getattr(client, "connection_pool", None)
    parser = getattr(pool, "connection_kwargs", {}).get("parser_class", DefaultParser)
    return float("inf") if HIREDIS_AVAILABLE and parser is DefaultParser else MGET_MAX_KEYS


def _unlink_matching(client: Any, pattern: str) -> None:
    """``UNLINK`` every key matching the glob ``pattern`` (``SCAN``), in batches of 500."""
    batch: list[Any] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) == 500:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


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


def _header_tokens(raw: bytes) -> list[int | None]:
    """The tokens an entry's header names (see ``lua/store.lua``)."""
    tokens = raw[: raw.find(b"\n")].partition(b" ")[2]
    return [_token(token) for token in tokens.split(b",")] if tokens else []


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
        return RedisTransport(cache, _django_primary(alias), _pickle, pickle.loads, packs=True)
    client = getattr(cache, "client", None)
    if client is None or not hasattr(client, "get_client"):
        return Transport(cache)
    _refuse_shards(client)
    primary = client.get_client(write=True)
    _refuse_cluster(primary)
    return RedisTransport(
        cache, primary, client.encode, _decoder(alias, client), packs=_pickles(alias)
    )


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


def _pickles(alias: str) -> bool:
    """Whether django-redis' cache ``alias`` serializes with pickle (its default)."""
    from django_redis.serializers.pickle import PickleSerializer

    config: dict[str, Any] = settings.CACHES[alias]
    options: dict[str, Any] = config.get("OPTIONS") or {}
    serializer = _imported(options.get("SERIALIZER", _DJANGO_REDIS_PICKLE["SERIALIZER"]))
    return isinstance(serializer, type) and issubclass(serializer, PickleSerializer)


def _django_primary(alias: str) -> Any:
    """A redis-py client of the first server of Django's RedisCache ``alias``: its primary, where
    it writes.

    Django documents no way to reach the client its cache uses (that lives in the undocumented
    ``RedisCacheClient``, behind the private ``_cache``), so this is a pool of ours, the one
    connection pool the query tier opens outside a cache's own. It is built with redis-py's
    public API exactly as Django documents its ``OPTIONS``: ``pool_class`` and ``parser_class``
    (dotted paths or classes) choose the pool and parser, ``serializer`` is Django's own (the
    tier pickles its entries), and every other option goes to the pool.
    """
    config: dict[str, Any] = settings.CACHES[alias]
    location = config["LOCATION"]
    servers = location.replace(";", ",").split(",") if isinstance(location, str) else location
    options = dict(config.get("OPTIONS", {}))
    options.pop("serializer", None)
    pool_class = _imported(options.pop("pool_class", None)) or redis.ConnectionPool
    options["parser_class"] = _imported(options.get("parser_class")) or DefaultParser
    return redis.Redis(connection_pool=pool_class.from_url(servers[0], **options))


def _imported(path_or_class: Any) -> Any:
    return import_string(path_or_class) if isinstance(path_or_class, str) else path_or_class


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
