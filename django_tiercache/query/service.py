"""The query tier: results in a Django cache (Redis), tagged with versioned keys.

Every key has a version token in the cache. An entry records the tokens of its keys read *before*
the database was queried; :meth:`QueryResults.invalidate` replaces the tokens on commit, so an
entry computed from pre-commit data no longer matches and is a miss. Keys known only after the
query (the rows' keys) take their tokens when the entry is stored, which is refused if one of
them changed since the read that preceded the query (see :meth:`QueryResults._store`). A hit
is one round trip: the entry and the current tokens of its keys read together (see
:mod:`.transport`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from django.core.cache import BaseCache, caches
from django.db import DEFAULT_DB_ALIAS, DatabaseError, models

from django_tiercache import collector, invalidation, replicas, stats
from django_tiercache.conf import MAX_TIMEOUT, tiercache_settings
from django_tiercache.keys import normalize_keys
from django_tiercache.query import positions
from django_tiercache.query.transport import Entry, Transport, is_fresh, transport_for
from django_tiercache.redact import redact

_M = TypeVar("_M", bound=models.Model)

logger = logging.getLogger(__name__)

#: Version tokens outlive every entry (entry TTLs are capped below this), so a token that expires
#: can never make an old entry match again.
VERSION_TIMEOUT = 2 * MAX_TIMEOUT
#: The query tier's name in the journal (``PurgeRequest.results``).
TIER = "query"
#: Longest time a single-flight lock is held by a caller that died while computing.
LOCK_TIMEOUT = 30
#: How many tag lists' version keys are remembered (a plan reads the same ones on every hit).
NAMES_SIZE = 4096


class Lookup:
    """The result of reading one entry and the current versions of its tags."""

    __slots__ = ("current", "entry", "locked", "reference")

    def __init__(
        self,
        entry: Entry | None,
        current: tuple[int | None, ...],
        locked: bool = False,
        reference: int | None = None,
    ) -> None:
        self.entry = entry
        self.current = current  # current token of each tag, None if it has none
        self.locked = locked  # this caller took the single-flight lock
        self.reference = reference  # the cache server's clock at the read (µs), if it has one

    @property
    def valid(self) -> bool:
        return self.entry is not None and self.entry.versions == self.current

    @property
    def fresh(self) -> bool:
        return is_fresh(self.entry, self.current)


class _Outage:
    """Fail-open bookkeeping and circuit breaker: one warning per outage, one notice on recovery.

    After a failure the cache is left alone for ``RETRY_INTERVAL`` seconds (reads go to the
    database at once); then one caller at a time tries it again, so an unreachable Redis costs
    at most one timeout per interval, not one per query.
    """

    def __init__(self) -> None:
        self.down = False
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def failed(self, exc: Exception) -> None:
        stats.incr("query_errors")
        with self._lock:
            first, self.down = not self.down, True
            self._retry_at = time.monotonic() + float(tiercache_settings.RETRY_INTERVAL)
        if first:
            logger.warning(
                "tiercache: query-tier cache unavailable (%s: %s); reading from the database "
                "until it recovers",
                type(exc).__name__,
                redact(str(exc)),
            )

    def may_retry(self) -> bool:
        """Whether this caller may try the cache again (at most one per ``RETRY_INTERVAL``)."""
        with self._lock:
            now = time.monotonic()
            if now < self._retry_at:
                return False
            self._retry_at = now + float(tiercache_settings.RETRY_INTERVAL)
            return True

    def recovered(self) -> None:
        with self._lock:
            was_down, self.down = self.down, False
        if was_down:
            logger.warning("tiercache: query-tier cache recovered")


class _Recent:
    """Keys this process invalidated in the last few seconds: their entries are likely misses,
    so reading them also takes the single-flight lock (one round trip fewer). A hint only."""

    def __init__(self, window: float = 5.0, size: int = 10_000) -> None:
        self.window, self.size = window, size
        self._seen: dict[str, float] = {}

    def note(self, keys: Iterable[str]) -> None:
        if len(self._seen) > self.size:
            self._seen.clear()
        now = time.monotonic()
        for key in keys:
            self._seen[key] = now

    def any(self, keys: Iterable[str]) -> bool:
        seen = self._seen
        if not seen:
            return False
        horizon = time.monotonic() - self.window
        return any(seen.get(key, 0.0) > horizon for key in keys)


class CacheUnavailable(Exception):
    """Raised inside the tier when the cache failed and ``FAIL_OPEN`` is on."""


class QueryResults:
    """Tagged results in the query-tier cache (``TIERCACHE["CACHE_ALIAS"]``).

    ``get``/``set``/``delete``/``get_or_set`` take ``keys`` (surrogate keys) the entry depends on;
    invalidating any of them makes the entry a miss. A cached ``None`` or empty list is a hit.
    """

    def __init__(self) -> None:
        self.outage = _Outage()
        self._transport: Transport | None = None
        self._prefix_cache: tuple[str, tuple[str, str, str]] | None = None
        self._version_keys: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.recently_invalidated = _Recent()
        self._next_poll = 0.0
        tiercache_settings.on_reload(self._forget_transport)

    # -- names --------------------------------------------------------------------------------

    @property
    def cache(self) -> BaseCache:
        return caches[tiercache_settings.CACHE_ALIAS]

    def entry_key(self, name: str) -> str:
        return f"{self._prefixes()[0]}{name}"

    def version_key(self, tag: str) -> str:
        return f"{self._prefixes()[1]}{tag}"

    def position_key(self, tag: str) -> str:
        """Where the WAL position of the tag's latest invalidation is kept (replicas)."""
        return f"{tiercache_settings.KEY_PREFIX}:p:{tag}"

    def lock_key(self, name: str) -> str:
        return f"{self._prefixes()[2]}{name}"

    def _prefixes(self) -> tuple[str, str, str]:
        """Entry, version and lock key prefixes (entries carry the schema version)."""
        prefix = tiercache_settings.KEY_PREFIX
        if self._prefix_cache is None or self._prefix_cache[0] != prefix:
            from django_tiercache.query.schema import schema_version

            self._prefix_cache = (
                prefix,
                (f"{prefix}:{schema_version()}:e:", f"{prefix}:v:", f"{prefix}:l:"),
            )
            self._version_keys = {}
        return self._prefix_cache[1]

    def _tag_keys(self, tags: tuple[str, ...], prefix: str) -> tuple[str, ...]:
        """The version keys of ``tags`` (``prefix``: this moment's, from :meth:`_prefixes`),
        remembered: one tuple per tag list, so a transport can remember what it derives too."""
        known = self._version_keys
        keys = known.get(tags)
        if keys is None:
            if len(known) >= NAMES_SIZE:
                known.clear()
            keys = known[tags] = tuple([prefix + tag for tag in tags])
        return keys

    # -- cache access, failing open -------------------------------------------------------------

    def _guard(self, operation: Callable[..., Any], *args: Any, replay: bool = True) -> Any:
        """``operation(*args)``, failing open: :class:`CacheUnavailable` instead of a cache
        error (``FAIL_OPEN``). With ``replay``, nothing reaches the cache while an invalidation
        that failed is still to be replayed (see :meth:`_replay`)."""
        recovering = replay and (self.outage.down or self._poll_due())
        if recovering:
            self._replay()
        try:
            result = operation(*args)
        except Exception as exc:
            if not tiercache_settings.FAIL_OPEN:
                raise
            self.outage.failed(exc)
            raise CacheUnavailable from exc
        if recovering:
            self.outage.recovered()
        return result

    def _poll_due(self) -> bool:
        """Whether this process should look for invalidations that failed elsewhere now."""
        poll = tiercache_settings.RECOVERY_POLL
        now = time.monotonic()
        if poll is None or now < self._next_poll:
            return False
        self._next_poll = now + float(poll)
        return True

    def _replay(self) -> None:
        """Replay every query-tier invalidation that failed (in any process) before anything
        is served; raise :class:`CacheUnavailable` until that went through. While the cache is
        down only one caller per ``RETRY_INTERVAL`` tries (the circuit breaker)."""
        fail_open = tiercache_settings.FAIL_OPEN
        if self.outage.down and fail_open and not self.outage.may_retry():
            raise CacheUnavailable
        try:
            self.transport.check_restart()
            invalidation.recover(tier=TIER)
        except DatabaseError:
            # The journal cannot be read: a process that saw a failure keeps off the cache; one
            # that only came to look carries on (the database fails its queries as well).
            logger.exception("tiercache: could not read the journal for failed invalidations")
            if self.outage.down:
                raise CacheUnavailable from None
        except Exception as exc:
            if not fail_open:
                raise
            self.outage.failed(exc)
            raise CacheUnavailable from exc

    @property
    def transport(self) -> Transport:
        """How to reach the cache. On Redis one transport (over the cache's connection pool)
        serves every thread until the settings change; any other wraps this thread's cache
        object."""
        transport = self._transport
        if transport is not None and transport.shared:
            return transport
        cache = self.cache
        if transport is None or transport.cache is not cache:
            transport = transport_for(tiercache_settings.CACHE_ALIAS)
            transport.guard_restarts(f"{tiercache_settings.KEY_PREFIX}:")
            self._transport = transport
        return transport

    def _forget_transport(self) -> None:
        """New settings, maybe a new cache: a new transport, and the old cache's outage is over."""
        self._transport = None
        self.outage = _Outage()

    def lookup(self, name: str, tags: Sequence[str], *, lock: bool = False) -> Lookup:
        """Read the entry and the versions of ``tags``: one round trip for a hit.

        With ``lock``, an entry that is not fresh and valid also takes the single-flight lock
        (with django-redis in the same round trip, atomically with the read).
        """
        tags = tuple(tags)
        entry_prefix, version_prefix, lock_prefix = self._prefixes()
        entry, current, locked, reference = self._guard(
            self.transport.read,
            entry_prefix + name,
            self._tag_keys(tags, version_prefix),
            lock_prefix + name if lock else None,
            LOCK_TIMEOUT,
        )
        if entry is not None and not (isinstance(entry, Entry) and entry.tags == tags):
            if not isinstance(entry, tuple):  # garbage in the cache: a miss, and counted
                stats.incr("query_errors")
            entry = None
        return Lookup(entry, tuple(current), locked, reference)

    def _store(
        self,
        name: str,
        tags: Sequence[str],
        before: tuple[Sequence[str], Lookup],
        value: Any,
        ttl: float,
        locked: bool,
    ) -> bool:
        """Store ``value`` under ``tags`` with the versions read *before* computing it (the tags
        and the lookup of that read), releasing the lock; True if stored.

        A tag whose token was not read then (none yet, or not among the tags read) takes its
        token now: created if still absent, refused if set since the read (see
        :meth:`Transport.write`): an entry never carries a token newer than its data.
        """
        read_tags, found = before
        known = dict(zip(read_tags, found.current, strict=True))
        tokens = {self.version_key(tag): known.get(tag) for tag in tags}
        entry = Entry(tuple(tags), (), time.time() + ttl, value)
        stale = float(tiercache_settings.STALE_TIMEOUT)
        return bool(
            self._guard(
                lambda: self.transport.write(
                    self.entry_key(name),
                    entry,
                    ttl + stale,
                    tokens,
                    found.reference,
                    VERSION_TIMEOUT,
                    self.lock_key(name) if locked else None,
                ),
                replay=not locked,  # a lock holder always writes: the write releases the lock
            )
        )

    # -- public API -----------------------------------------------------------------------------

    def get(self, key: str, default: Any = None, keys: Iterable[str] = ()) -> Any:
        """The value under ``key`` if none of its ``keys`` was invalidated since, else default."""
        try:
            found = self.lookup(key, sorted(normalize_keys(keys)))
        except CacheUnavailable:
            return default
        return found.entry.value if found.fresh and found.entry else default

    def set(
        self, key: str, value: Any, timeout: float | None = None, keys: Iterable[str] = ()
    ) -> None:
        """Store ``value`` under ``key``, tagged with ``keys``.

        The versions are read now: prefer :meth:`get_or_set`, which reads them before computing.
        """
        tags = sorted(normalize_keys(keys))
        with contextlib.suppress(CacheUnavailable):
            found = self.lookup(key, tags)
            self._store(key, tags, (tags, found), value, _ttl(timeout), locked=False)

    def delete(self, key: str) -> None:
        with contextlib.suppress(CacheUnavailable):
            self._guard(lambda: self.cache.delete(self.entry_key(key)))

    def get_or_set(
        self,
        key: str,
        compute: Callable[[], Any],
        timeout: float | None = None,
        keys: Iterable[str] = (),
    ) -> Any:
        """The value under ``key``, or ``compute()`` stored under it (single-flight, SWR)."""
        return self.fetch(key, sorted(normalize_keys(keys)), compute, timeout)

    def fetch(
        self,
        name: str,
        tags: Sequence[str],
        compute: Callable[[], Any],
        timeout: float | None = None,
        *,
        storable: Callable[[], bool] | None = None,
        expect_miss: bool = False,
        retag: Callable[[Any], Sequence[str]] | None = None,
    ) -> Any:
        """Serve ``name`` or compute it once: the engine behind querysets and ``get_or_set``.

        Read; a fresh valid entry is a hit. Otherwise :meth:`_claim` the entry: serve what
        another caller just stored or, within ``STALE_TIMEOUT``, the expired entry while the
        lock holder refreshes it; or become the caller that computes. Then
        :meth:`_compute_and_store`. With the cache down, ``compute()`` is returned as is.
        ``expect_miss`` tries the lock in the reading round trip (one round trip before the
        database instead of two). ``retag(value)`` gives the tags to store a computed value
        under when they depend on it (the keys of a result's rows): the tags not read before
        computing get their tokens as :meth:`_store` says.
        """
        ttl = _ttl(timeout)  # a bad timeout raises here, before any lock is taken
        scope = collector.current()
        if scope is not None:
            scope.keys.update(tags)
        try:
            found = self.lookup(name, tags, lock=expect_miss)
            if found.fresh:
                stats.incr("query_hits")
                if scope is not None:
                    scope.hits += 1
                return found.entry.value  # type: ignore[union-attr]
            if scope is not None:
                scope.misses += 1
            found, serve = self._claim(name, tags, found, lock_tried=expect_miss)
        except CacheUnavailable:
            return compute()
        if serve:
            return found.entry.value  # type: ignore[union-attr]
        stats.incr("query_misses")
        return self._compute_and_store(name, tags, found, compute, ttl, storable, retag)

    def _claim(
        self, name: str, tags: Sequence[str], found: Lookup, *, lock_tried: bool
    ) -> tuple[Lookup, bool]:
        """After a read that was not a hit: ``(entry, True)`` to serve an entry, ``(versions,
        False)`` to compute (with ``versions.locked`` when this caller holds the lock)."""
        if not lock_tried:
            # Take the lock and look again in one round trip: whoever held it may have just
            # stored a fresh entry, which then is served instead of being computed twice.
            found = self.lookup(name, tags, lock=True)
            if found.fresh:
                if found.locked:
                    self._unlock(name)
                stats.incr("query_hits")
                return found, True
        if found.locked:
            return found, False
        if found.valid:  # expired, within the stale window: served while the holder refreshes
            stats.incr("query_stale")
            return found, True
        waited = self._wait_for(name, tags)
        if waited is not None:
            stats.incr("query_hits")
            return waited, True
        return self._relookup(name, tags, found), False

    def _compute_and_store(
        self,
        name: str,
        tags: Sequence[str],
        before: Lookup,
        compute: Callable[[], Any],
        ttl: float,
        storable: Callable[[], bool] | None,
        retag: Callable[[Any], Sequence[str]] | None,
    ) -> Any:
        """``compute()``, stored with the versions read ``before`` (under ``retag(value)`` if
        given) unless ``storable()`` says no; the lock, if held, is released whatever happens."""
        try:
            value = compute()
            stored_tags = tags if retag is None else retag(value)
        except BaseException:
            if before.locked:
                self._unlock(name)
            raise
        try:
            if storable is None or storable():
                self._store(name, stored_tags, (tags, before), value, ttl, before.locked)
            elif before.locked:
                self._unlock(name)
        except CacheUnavailable:
            pass
        return value

    def _unlock(self, name: str) -> None:
        with contextlib.suppress(CacheUnavailable):
            # Always tried: a lock left behind would hold every other caller back.
            self._guard(self.transport.unlock, self.lock_key(name), replay=False)

    def _wait_for(self, name: str, tags: Sequence[str]) -> Lookup | None:
        """Poll for the entry another caller is computing; None after the bounded wait."""
        deadline = time.monotonic() + float(tiercache_settings.SINGLE_FLIGHT_WAIT)
        pause = 0.005
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            try:
                found = self.lookup(name, tags)
            except CacheUnavailable:
                return None
            if found.fresh:
                return found
        return None

    def _relookup(self, name: str, tags: Sequence[str], previous: Lookup) -> Lookup:
        """Fresh versions before computing after a wait (the earlier ones may be outdated)."""
        try:
            return self.lookup(name, tags)
        except CacheUnavailable:
            return previous

    # -- invalidation ---------------------------------------------------------------------------

    def invalidate(self, keys: Iterable[str], using: str = DEFAULT_DB_ALIAS) -> None:
        """Give each key a new version: every entry tagged with one of them becomes a miss.

        ``using`` is the database the change was committed to: where it has read replicas, its
        WAL position is recorded with the keys first (see :meth:`source`). Raises when the cache
        is unreachable: the caller (the commit hook) records the failure in the outbox so that a
        redrive retries it.
        """
        keys = normalize_keys(keys)
        if keys:
            try:
                self._record_position(keys, using)
                self.transport.invalidate([self.version_key(k) for k in keys], VERSION_TIMEOUT)
            except Exception as exc:
                self.outage.failed(exc)  # serve nothing here until it is replayed
                raise
            self.recently_invalidated.note(keys)

    def _record_position(self, keys: Iterable[str], using: str) -> None:
        try:
            position = replicas.primary_position(using)
        except Exception:  # the commit is done: invalidate anyway, as without replicas
            logger.exception("tiercache: could not read the WAL position of %r", using)
            return
        if position is not None:
            names = [self.position_key(key) for key in keys]
            positions.record(self.cache, names, position, VERSION_TIMEOUT)

    def source(self, tags: Sequence[str], read_alias: str, write_alias: str) -> str:
        """The database to compute a missed entry tagged ``tags`` from: ``read_alias``, unless it
        is a replica that may not have applied the latest invalidation of a tag; then
        ``write_alias``. Called after the tags' versions were read, so every invalidation
        those versions reflect has its position recorded already.
        """
        if not replicas.may_lag(read_alias, write_alias):
            return read_alias
        if replicas.comparable(read_alias, write_alias):
            try:
                needed = positions.required(self.cache, [self.position_key(tag) for tag in tags])
            except Exception:
                needed = replicas.PRIMARY  # unknown: trust only the write database
            if replicas.has_applied(read_alias, needed):
                return read_alias
        stats.incr("query_primary_reads")
        return write_alias

    def invalidate_all(self) -> None:
        """Drop every entry and version token of the query tier (``KEY_PREFIX``).

        On Redis only this library's keys go; a cache that cannot match keys (LocMem,
        Memcached) is cleared whole. Raises as :meth:`invalidate` does, after which nothing is
        served here until it was replayed.
        """
        try:
            self.transport.clear(f"{tiercache_settings.KEY_PREFIX}:")
            self.transport.check_restart()  # records the run again (one of the tier's keys)
        except Exception as exc:
            self.outage.failed(exc)
            raise

    def versions(self, keys: Iterable[str]) -> dict[str, int | None]:
        """Current version token of each key (None when it has none yet), read as a lookup
        reads them: from the primary, never from a replica of the cache."""
        tags = sorted(normalize_keys(keys))
        names = [self.version_key(tag) for tag in tags]
        current = self.transport.read(self.entry_key(""), names, None, LOCK_TIMEOUT)[1]
        return dict(zip(tags, current, strict=True))


def _ttl(timeout: float | None) -> float:
    value = tiercache_settings.TIMEOUT if timeout is None else timeout
    if not (type(value) in (int, float) and 0 < value < MAX_TIMEOUT):
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT})")
    return float(value)


#: The process-wide service, like Warehouse's RedisQueryResults.
query_results = QueryResults()


def connect() -> None:
    """Register the query tier with the orchestrator: invalidated first on every commit."""
    invalidation.register_tier(
        invalidation.TierHandler(
            name=TIER,
            # Looked up on each call, so a replaced or patched method is the one called.
            invalidate=lambda keys, using: query_results.invalidate(keys, using),
            invalidate_all=lambda: query_results.invalidate_all(),
        )
    )
