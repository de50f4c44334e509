"""The query tier: ``.cached()`` querysets and the service that stores their results in Redis.

Public names: :class:`TierCacheManager`, :class:`CachedQuerySet`, :class:`QueryResults` and its
process-wide instance :data:`query_results`.
"""

from __future__ import annotations

from django_tiercache.query.querysets import CachedQuerySet, TierCacheManager
from django_tiercache.query.service import CacheUnavailable, QueryResults, query_results

__all__ = [
    "CacheUnavailable",
    "CachedQuerySet",
    "QueryResults",
    "TierCacheManager",
    "query_results",
]
