"""System checks of the query tier's cache: refused shapes (E009), a Redis Cluster cache set up
wrongly (E012) and missing timeouts (W006).

E009: the cache is Redis in a shape the query tier cannot serve correctly (django-redis'
``ShardClient``, a Redis Cluster client behind django-redis): refused at start-up rather than
failing per query. E012: a :class:`~django_tiercache.query.cluster.RedisClusterCache` whose
``LOCATION`` is not a list of node URLs or that reads from replicas. Checked without connecting.
W006: the cache has no socket timeouts, so a stalled Redis blocks every read and every commit
for redis-py's default (none: forever).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning

from django_tiercache.conf import tiercache_settings
from django_tiercache.query import cluster
from django_tiercache.query.transport import UnsupportedCache, transport_for

#: The timeout options of each Redis backend: (connect, read/write).
_TIMEOUT_OPTIONS = {
    "django_redis.cache.RedisCache": ("SOCKET_CONNECT_TIMEOUT", "SOCKET_TIMEOUT"),
    "django.core.cache.backends.redis.RedisCache": ("socket_connect_timeout", "socket_timeout"),
    cluster.BACKEND: ("socket_connect_timeout", "socket_timeout"),
}


@register(Tags.caches)
def check_query_cache(**kwargs: Any) -> list[CheckMessage]:
    """E009: a Redis shape the query tier refuses; E012: a cluster set up wrongly; W006: no
    socket timeouts."""
    alias = tiercache_settings.CACHE_ALIAS
    config = getattr(settings, "CACHES", {}).get(alias) if isinstance(alias, str) else None
    if not isinstance(config, dict):
        return []  # reported by E002/E003
    if config.get("BACKEND") == cluster.BACKEND:
        problems = _cluster_problems(config)
        if problems:
            return [Error(m, hint=h, obj=alias, id="tiercache.E012") for m, h in problems]
    else:
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


def _cluster_problems(config: dict[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a :class:`RedisClusterCache` for the query tier: (message, hint)."""
    problems = []
    try:
        cluster.startup_nodes(config.get("LOCATION", ""))
    except ValueError as exc:
        problems.append(
            (
                f"The Redis Cluster cache's LOCATION cannot be used: {exc}.",
                "Set LOCATION to a list of 'redis://host:port' (or 'rediss://') URLs of the "
                "cluster's nodes; one reachable node is enough to find the others.",
            )
        )
    options = config.get("OPTIONS") or {}
    replica_reads = [name for name in cluster.REPLICA_READ_OPTIONS if options.get(name)]
    if replica_reads:
        problems.append(
            (
                f"The Redis Cluster cache reads from replicas ({', '.join(replica_reads)}): "
                "a replica can return a version token older than a completed invalidation.",
                f"Remove {', '.join(replica_reads)} from OPTIONS: the query tier reads from "
                "the masters.",
            )
        )
    return problems
