"""The ``TIERCACHE`` setting: documented defaults, read lazily, reloaded on ``setting_changed``.

Values are not validated here: :mod:`django_tiercache.checks` reports bad values at start-up with a
hint, so a typo never becomes a traceback at request time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

SETTING_NAME = "TIERCACHE"
#: Longest query-tier TTL, in seconds (3.5 days): version tokens live twice as long, so an expired
#: token can never make an old entry valid again.
MAX_TIMEOUT = 302_400

#: Defaults of every top-level key of ``TIERCACHE``.
DEFAULTS: dict[str, Any] = {
    # Django cache alias of the query tier (django-redis in production).
    "CACHE_ALIAS": "default",
    # Prefix of every key the query tier writes.
    "KEY_PREFIX": "tc",
    # Query tier TTL in seconds; always finite.
    "TIMEOUT": 300,
    # Serve-stale window (seconds) while one caller refreshes an expired entry.
    "STALE_TIMEOUT": 30,
    # Seconds a caller waits for another caller computing the same entry, then computes itself.
    "SINGLE_FLIGHT_WAIT": 2.0,
    # Cache errors fall back to the database instead of raising.
    "FAIL_OPEN": True,
    # Seconds the query tier leaves a failed cache alone (circuit breaker) before one caller
    # tries it again: an unreachable Redis costs one timeout per interval, not one per query,
    # and a restarted one is used again within the interval.
    "RETRY_INTERVAL": 1.0,
    # Seconds between two looks, in each process, at the outbox for query-tier invalidations
    # that failed in some process (then replayed before anything is served); None: never.
    "RECOVERY_POLL": 5.0,
    # Replicas that must confirm an invalidation (Redis WAIT) for it to count as done; 0: none.
    "WAIT_FOR_REPLICAS": 0,
    # Seconds an invalidation waits for those replicas before it counts as failed.
    "WAIT_TIMEOUT": 0.1,
    # Purge the edge in a worker (True: Celery when configured, else Django 6's tasks framework
    # when TASKS has a backend that runs tasks elsewhere, else inline) or inline after commit.
    "PURGE_ASYNC": True,
    # Alias in Django's TASKS setting (Django 6) of the backend the edge tier's tasks go to.
    "TASK_BACKEND": "default",
    # Purgers by name: {"name": {"BACKEND": "dotted.path", ...options}}.
    "PURGERS": {},
    # Seconds that publishing a purge task may take in a commit hook (connecting and the broker's
    # handshake); on timeout the outbox rows stay pending for the redrive.
    "PUBLISH_TIMEOUT": 1.0,
    # Dotted path of ``f(row_ids: list[int], using: str) -> None`` that hands committed outbox
    # rows to the edge tier; None picks the built-in dispatcher (see django_tiercache.edge.outbox).
    "DISPATCHER": None,
    # Database aliases that serve reads from a replica of the database a model writes to; None:
    # the aliases whose settings describe a replica (TEST MIRROR, or the same NAME on another
    # HOST/PORT); []: no replica safety (docs/query.rst "Database read replicas").
    "READ_REPLICAS": None,
    # Longest wait (seconds) for the replicas to apply a change before its edge purge goes out.
    "REPLICA_WAIT": 2.0,
    # HTTP tier settings, merged over HTTP_DEFAULTS.
    "HTTP": {},
    # Dotted paths of query-tier warmers run by ``tiercache_warm --queries`` (besides the ones
    # registered with ``@django_tiercache.warmer``).
    "WARMERS": [],
    # Add the "Purge selected from caches" action to every ModelAdmin of the default admin site.
    "ADMIN_ACTION": False,
}

#: Defaults of ``TIERCACHE["HTTP"]``.
HTTP_DEFAULTS: dict[str, Any] = {
    "BROWSER_MAX_AGE": 0,
    "EDGE_MAX_AGE": 3600,
    "STALE_WHILE_REVALIDATE": 60,
    "STALE_IF_ERROR": 86400,
    "MAX_KEY_HEADER_BYTES": 16384,
    "CACHEABLE_STATUSES": (200, 203, 300, 301, 404, 410),
    "KEY_HEADERS": ("Surrogate-Key", "Cache-Tag"),
    # None: on when settings.DEBUG is true.
    "SERVER_TIMING": None,
    # Give origin_cache / private_cache GET and HEAD responses Django's ETag (a hash of the body).
    "ETAG": True,
}


class TierCacheSettings:
    """``TIERCACHE`` merged over the defaults, memoised until the setting changes.

    >>> from django_tiercache.conf import tiercache_settings
    >>> tiercache_settings.TIMEOUT
    300
    """

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}
        self._reload_hooks: list[Callable[[], None]] = []

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(django_settings, SETTING_NAME, None)
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown TIERCACHE setting {name!r}")
        try:
            return self._cache[name]
        except KeyError:
            pass
        value = self.user_settings.get(name, DEFAULTS[name])
        if name == "HTTP":
            value = {**HTTP_DEFAULTS, **(value if isinstance(value, dict) else {})}
        self._cache[name] = value
        return value

    def on_reload(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Register ``hook`` to run whenever the setting changes (e.g. to drop built purgers)."""
        self._reload_hooks.append(hook)
        return hook

    def reload(self) -> None:
        self._cache.clear()
        for hook in self._reload_hooks:
            hook()


tiercache_settings = TierCacheSettings()


@receiver(setting_changed)
def _reload_settings(*, setting: str, **kwargs: Any) -> None:
    if setting in (SETTING_NAME, "CACHES", "DEBUG"):
        tiercache_settings.reload()
