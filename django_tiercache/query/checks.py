"""System checks of the query tier's cache: refused shapes (E009) and missing timeouts (W006).

E009: the cache is Redis in a shape the query tier cannot serve correctly (django-redis'
``ShardClient``, a Redis Cluster client): refused at start-up rather than failing per query.
W006: the cache has no socket timeouts, so a stalled Redis blocks every read and every commit
for redis-py's default (none: forever).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning

from django_tiercache.conf import tiercache_settings
from django_tiercache.query.transport import UnsupportedCache, transport_for

#: The timeout options of each Redis backend: (connect, read/write).
_TIMEOUT_OPTIONS = {
    "django_redis.cache.RedisCache": ("SOCKET_CONNECT_TIMEOUT", "SOCKET_TIMEOUT"),
    "django.core.cache.backends.redis.RedisCache": ("socket_connect_timeout", "socket_timeout"),
}


@register(Tags.caches)
def check_query_cache(**kwargs: Any) -> list[CheckMessage]:
    """E009: a Redis shape the query tier refuses; W006: no socket timeouts."""
    alias = tiercache_settings.CACHE_ALIAS
    config = getattr(settings, "CACHES", {}).get(alias) if isinstance(alias, str) else None
    if not isinstance(config, dict):
        return []  # reported by E002/E003
    try:
        transport_for(alias)
    except UnsupportedCache as exc:
        return [Error(exc.message, hint=exc.hint, obj=alias, id="tiercache.E009")]
    names = _TIMEOUT_OPTIONS.get(str(config.get("BACKEND", "")))
    options = config.get("OPTIONS") or {}
    missing = [name for name in names or () if not options.get(name)]
    if missing:
        return [
            CheckWarning(
                f"The query-tier cache {alias!r} sets no {' or '.join(missing)}: a Redis that "
                "stops answering blocks every cached read and every commit until the operating "
                "system gives up.",
                hint=f"Set OPTIONS {', '.join(f'{n!r}: 0.5' for n in names or ())} (seconds) in "
                f"CACHES[{alias!r}]; the query tier then reads from the database and leaves "
                "Redis alone for TIERCACHE['RETRY_INTERVAL'] seconds.",
                obj=alias,
                id="tiercache.W006",
            )
        ]
    return []
