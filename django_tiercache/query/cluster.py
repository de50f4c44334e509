"""Redis Cluster: a Django cache backend over redis-py's ``RedisCluster`` and the query tier's
transport for it.

Key layout. An entry and its single-flight lock share a slot: both keys start with a hash tag
made from the entry's name (``{<digest>}``), so the locking read is one script on one shard.
Version tokens keep their plain names and so spread over every shard; they are read per slot
(``MGET`` per slot, one pipeline across the shards). Why reading them apart from the entry cannot
serve data older than a completed invalidation: docs/query.rst, "Redis Cluster".

Everything goes to the masters (never ``READONLY`` replicas); the client is created on first
use, so a cluster that is down at start-up costs reads from the database, not errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError, RedisError, TimeoutError
from redis.retry import Retry

from django_tiercache.conf import tiercache_settings
from django_tiercache.query.restarts import NodeRunGuard
from django_tiercache.query.schema import schema_version
from django_tiercache.query.transport import (
    Entry,
    RedisTransport,
    ReplicationError,
    _glob_escape,
    _ms,
    _pickle,
    _token,
    _unlink_matching,
)

#: The backend's dotted path, as users write it in ``CACHES``.
BACKEND = "django_tiercache.query.cluster.RedisClusterCache"

#: ``OPTIONS`` that would send reads to replicas (asynchronously replicated: older tokens).
REPLICA_READ_OPTIONS = ("read_from_replicas", "load_balancing_strategy")

_READ_SCRIPT = (Path(__file__).parent / "lua" / "cluster_read.lua").read_text()


def startup_nodes(location: str | Sequence[str]) -> tuple[list[ClusterNode], dict[str, Any]]:
    """The nodes of ``LOCATION`` (``redis://`` or ``rediss://`` URLs, database 0) and the
    connection options their URLs carry (user, password, TLS). Raises ``ValueError``."""
    if isinstance(location, str):
        urls = [url for url in location.replace(";", ",").split(",") if url.strip()]
    else:
        urls = list(location)
    if not urls:
        raise ValueError("LOCATION names no node")
    nodes: list[ClusterNode] = []
    options: dict[str, Any] = {}
    for url in urls:
        parts = urlsplit(url.strip() if isinstance(url, str) else "")
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"{parts.scheme or url!r} is not a redis:// or rediss:// URL")
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError("a cluster has only database 0")
        nodes.append(ClusterNode(parts.hostname, parts.port or 6379))  # type: ignore[no-untyped-call]
        if parts.username:
            options["username"] = unquote(parts.username)
        if parts.password:
            options["password"] = unquote(parts.password)
        if parts.scheme == "rediss":
            options["ssl"] = True
    return nodes, options


def _dumps(value: Any) -> bytes | int:
    # Integers as digits, so that INCRBY works on them (as Django's RedisCache stores them).
    return value if type(value) is int else pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def _loads(raw: Any) -> Any:
    try:
        return int(raw)
    except ValueError:
        return pickle.loads(raw)  # noqa: S301 - the cache's own values, as Django's RedisCache


class RedisClusterCache(BaseCache):
    """A Django cache on a Redis Cluster (``LOCATION``: one or more ``redis://host:port`` URLs of
    its nodes; ``OPTIONS``: keyword arguments of ``redis.cluster.RedisCluster``, e.g.
    ``socket_connect_timeout`` and ``socket_timeout``). One client per cache, shared by every
    thread; each node has its own connection pool. A command that fails is not retried unless
    ``OPTIONS`` give a ``retry`` (redis-py's default would wait through three more timeouts and
    backoffs; the query tier falls back to the database and retries after ``RETRY_INTERVAL``).
    Redirections (``MOVED``, ``ASK``) are followed either way. Every new connection goes through
    :attr:`restarts` (after a ``redis_connect_func`` of ``OPTIONS``)."""

    def __init__(self, server: str | Sequence[str], params: dict[str, Any]) -> None:
        super().__init__(params)
        self._location = server  # checked by tiercache.E012, parsed on first use
        self._options: dict[str, Any] = dict(params.get("OPTIONS") or {})
        #: The restart check of each master (see :mod:`.restarts`): the query tier watches it.
        self.restarts = NodeRunGuard(self._options.pop("redis_connect_func", None))
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """Whether the client exists (it may hold connections)."""
        return self._client is not None

    @property
    def cluster(self) -> RedisCluster:
        """The ``RedisCluster`` client, connected (and the slot map read) on first use."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    nodes, url_options = startup_nodes(self._location)
                    options = {"retry": Retry(NoBackoff(), 0), **url_options, **self._options}
                    options["redis_connect_func"] = self.restarts.on_connect
                    self._client = RedisCluster(startup_nodes=nodes, **options)
                client = self._client
        return client

    def _expiry(self, timeout: Any) -> int | None:
        """Milliseconds to live (None: no expiry; 0: already expired)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else max(0, int(float(timeout) * 1000))

    def _set(self, key: Any, value: Any, timeout: Any, version: Any, nx: bool) -> bool:
        name = self.make_and_validate_key(key, version=version)
        px = self._expiry(timeout)
        if px == 0:  # Django: a timeout of 0 or less expires the key at once
            if not nx:
                self.cluster.delete(name)
            return False
        return bool(self.cluster.set(name, _dumps(value), px=px, nx=nx))

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        return self._set(key, value, timeout, version, nx=True)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        self._set(key, value, timeout, version, nx=False)

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        raw = self.cluster.get(self.make_and_validate_key(key, version=version))
        return default if raw is None else _loads(raw)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        name, px = self.make_and_validate_key(key, version=version), self._expiry(timeout)
        if px is None:
            return bool(self.cluster.persist(name))
        return bool(self.cluster.pexpire(name, max(px, 1)))

    def delete(self, key: Any, version: Any = None) -> bool:
        return bool(self.cluster.delete(self.make_and_validate_key(key, version=version)))

    def has_key(self, key: Any, version: Any = None) -> bool:
        return bool(self.cluster.exists(self.make_and_validate_key(key, version=version)))

    def get_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        names = {self.make_and_validate_key(key, version=version): key for key in keys}
        if not names:
            return {}
        values = self.cluster.mget_nonatomic(list(names))
        return {
            key: _loads(raw)
            for key, raw in zip(names.values(), values, strict=True)
            if raw is not None
        }

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> list[Any]:
        px = self._expiry(timeout)
        with self.cluster.pipeline() as pipe:  # type: ignore[no-untyped-call]
            for key, value in data.items():
                name = self.make_and_validate_key(key, version=version)
                if px == 0:
                    pipe.delete(name)
                else:
                    pipe.set(name, _dumps(value), px=px)
            pipe.execute()
        return []

    def delete_many(self, keys: Any, version: Any = None) -> None:
        names = [self.make_and_validate_key(key, version=version) for key in keys]
        if names:
            self.cluster.delete(*names)

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        name = self.make_and_validate_key(key, version=version)
        if not self.cluster.exists(name):
            raise ValueError(f"Key '{key}' not found.")
        return int(self.cluster.incrby(name, delta))

    def query_transport(self) -> ClusterTransport:
        """The query tier's transport for this cache (see :func:`.transport.transport_for`)."""
        return ClusterTransport(self)

    def clear(self) -> None:
        """``FLUSHDB`` on every master, as Django's ``RedisCache.clear()`` does on its server."""
        self.cluster.flushdb(target_nodes=RedisCluster.PRIMARIES)


class ClusterTransport(RedisTransport):
    """The query tier on :class:`RedisClusterCache` (see the module docstring for the layout).

    A hit is one pipeline: the entry and each token slot read together, one round trip per
    shard, sent to every shard before any reply is read. The locking read reads the tokens
    first, then runs ``lua/cluster_read.lua`` on the entry's shard.
    """

    def __init__(self, cache: RedisClusterCache) -> None:
        self.cache = self._cluster_cache = cache
        self._encode, self._decode, self._packs = _pickle, pickle.loads, True
        self._prefix = None  # every key through cache.make_key()
        self._read_script: Any = None
        prefix = tiercache_settings.KEY_PREFIX
        # The service's entry and lock prefixes (see QueryResults.entry_key/lock_key): what
        # follows them is the entry's name, which places both in one slot.
        self._markers = (f"{prefix}:{schema_version()}:e:", f"{prefix}:l:")

    @property
    def client(self) -> Any:
        return self._cluster_cache.cluster

    def _tagged(self, key: str) -> str:
        """The Redis name of an entry or lock ``key``: a hash tag of the entry's name first, so
        that an entry and its lock share a slot."""
        name = key
        for marker in self._markers:
            if key.startswith(marker):
                name = key[len(marker) :]
                break
        digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
        return f"{{{digest}}}{self._key(key)}"

    def read(
        self, entry_key: str, version_keys: Sequence[str], lock_key: str | None, lock_ttl: int
    ) -> tuple[Any, list[int | None], bool, int | None]:
        """As :meth:`RedisTransport.read`, without a reference: the tokens live on shards whose
        clocks are not one clock (a token not read before the database refuses the store)."""
        token_names = [self._key(key) for key in version_keys]
        if lock_key is None:
            values = self.client.mget_nonatomic([self._tagged(entry_key), *token_names])
            return self._entry(values[0]), [_token(v) for v in values[1:]], False, None
        tokens = [_token(v) for v in self.client.mget_nonatomic(token_names)] if token_names else []
        if self._read_script is None:
            self._read_script = self.client.register_script(_READ_SCRIPT)
        expected = ",".join("-" if token is None else str(token) for token in tokens)
        now = int(time.time() * 1000)
        entry, locked = self._read_script(
            keys=[self._tagged(entry_key), self._tagged(lock_key)], args=[lock_ttl, now, expected]
        )
        return self._entry(entry), tokens, bool(locked), None

    def unlock(self, lock_key: str) -> None:
        self.client.delete(self._tagged(lock_key))

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
        """As :meth:`Transport.write` (no reference here): a token not read before the database
        is looked up first (one round trip more), created where absent, and refuses the store
        where present."""
        unknown = [key for key, token in tokens.items() if token is None]
        present = self.client.mget_nonatomic([self._key(k) for k in unknown]) if unknown else []
        created = {key: secrets.randbits(62) for key in unknown}
        stored = not any(value is not None for value in present)
        versions = [created[key] if token is None else token for key, token in tokens.items()]
        # The entry and its lock are on one shard, written in this order (a reader in between
        # sees the lock still held). New tokens go to their own shards in the same pipeline, in
        # no particular order with the entry: an entry seen before its tokens is a miss, and one
        # whose token another caller created first never matches.
        header = f"{int(entry.fresh_until * 1000)} {','.join(map(str, versions))}\n"
        with self.client.pipeline() as pipe:
            if stored:
                body = self._body(entry)
                pipe.set(self._tagged(entry_key), header.encode() + body, px=_ms(ttl))
                for key, token in created.items():
                    pipe.set(self._key(key), token, nx=True, ex=version_ttl)
            if unlock_key is not None:
                pipe.delete(self._tagged(unlock_key))
            pipe.execute()
        return stored

    def _patterns(self, prefix: str) -> tuple[str, str]:
        """The globs of this tier's keys: tokens by their prefix, entries, locks and the
        restart records by their prefix behind a hash tag."""
        escaped = _glob_escape(self._key(prefix))
        return f"{escaped}*", f"\\{{*}}{escaped}*"

    def clear(self, prefix: str) -> None:
        """Delete this tier's keys on every master."""
        for pattern in self._patterns(prefix):
            _unlink_matching(self.client, pattern)

    def guard_restarts(self, prefix: str) -> None:
        """Every new connection to a master checks its ``run_id`` first (:class:`.restarts.
        NodeRunGuard`); connections opened before this call are checked now."""
        self._cluster_cache.restarts.watch(self._key(f"{prefix}run"), self._patterns(prefix))
        if self._cluster_cache.connected:
            with contextlib.suppress(RedisError):  # unreachable: every connection checks anyway
                self.check_restart()

    def check_restart(self) -> None:
        """Check one pooled connection of each master now. A master that cannot be reached is
        skipped: it serves nothing, and the connection that reaches it again is checked."""
        for node in self.client.get_primaries():
            pool = self.client.get_redis_connection(node).connection_pool
            with contextlib.suppress(ConnectionError, TimeoutError):
                connection = pool.get_connection()  # a new one is checked as it connects
                try:
                    self._cluster_cache.restarts.check(connection)
                finally:
                    pool.release(connection)

    def invalidate(self, version_keys: Sequence[str], ttl: int) -> None:
        """Set the tokens, one pipeline routed per shard; raises unless every shard stored
        them. With ``WAIT_FOR_REPLICAS``, master by master (:meth:`_invalidate_confirmed`)."""
        names = [self._key(key) for key in version_keys]
        token = secrets.randbits(62)
        replicas = int(tiercache_settings.WAIT_FOR_REPLICAS)
        if replicas:
            self._invalidate_confirmed(names, token, ttl, replicas)
        else:
            self._set_tokens(names, token, ttl)

    def _set_tokens(self, names: Sequence[str], token: int, ttl: int) -> None:
        with self.client.pipeline() as pipe:
            for name in names:
                pipe.set(name, token, ex=ttl)
            pipe.execute()  # raises on any error reply, an OOM included

    def _invalidate_confirmed(
        self, names: Sequence[str], token: int, ttl: int, replicas: int
    ) -> None:
        """The tokens of each master, then ``WAIT``, in one pipeline of that master's own client
        (one connection: ``WAIT`` counts the writes of its connection); raises unless every
        master stored its tokens and ``replicas`` of its replicas confirmed them.

        The cluster client's pipeline cannot do this: it sends a command again on another
        connection after a redirection (``MOVED``, ``ASK``), where no ``WAIT`` follows it. A
        master's own client follows none: a slot that has moved, like a master that cannot be
        reached, fails the invalidation, and the tokens then go through the cluster client as
        without ``WAIT`` (it follows the redirection and learns the new slot map, so that the
        replay reaches the right master).
        """
        by_master: dict[str, tuple[Any, list[str]]] = {}
        for name in names:
            node = self.client.get_node_from_key(name)
            by_master.setdefault(node.name, (node, []))[1].append(name)
        timeout = _ms(float(tiercache_settings.WAIT_TIMEOUT))
        unconfirmed: list[str] = []
        for node, group in by_master.values():
            pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
            for name in group:
                pipe.set(name, token, ex=ttl)
            pipe.wait(replicas, timeout)
            try:
                confirmed = pipe.execute()[-1]
            except RedisError:
                with contextlib.suppress(RedisError):
                    self._set_tokens(names, token, ttl)
                raise
            if confirmed < replicas:
                unconfirmed.append(f"{confirmed} on {node.name}")
        if unconfirmed:
            raise ReplicationError(
                f"fewer than {replicas} replica(s) confirmed the write: {', '.join(unconfirmed)}"
            )
