"""In-process counters, cheap to bump and to read (no Redis call).

>>> from django_tiercache import stats
>>> stats.snapshot()["query_hits"]
0
"""

from __future__ import annotations

import threading

#: Counter names and what they count.
NAMES = {
    "query_hits": "cached query results served fresh",
    "query_misses": "cached queries computed by the database",
    "query_stale": "stale results served while another caller refreshed",
    "query_bypasses": "cached queries sent to the database without the cache",
    "query_primary_reads": "missed entries read from the write database: a replica lagged",
    "query_errors": "query-tier cache errors (fail-open fell back to the database)",
    "query_restarts": "times the query tier's keys were dropped: Redis had a new run_id",
    "purges_sent": "purges handed to an edge purger (one per purger per outbox delivery)",
    "purges_failed": "purges an edge purger did not complete (retryable or refused)",
    "purges_retried": "purges of outbox rows that had been attempted before",
    "keys_purged": "keys in purges an edge purger completed",
}

_lock = threading.Lock()
_counters: dict[str, int] = dict.fromkeys(NAMES, 0)


def incr(name: str, amount: int = 1) -> None:
    with _lock:
        _counters[name] += amount


def get(name: str) -> int:
    return _counters[name]


def snapshot() -> dict[str, int]:
    """A copy of every counter."""
    with _lock:
        return dict(_counters)


def reset() -> None:
    with _lock:
        for name in _counters:
            _counters[name] = 0


def outbox_pending_age(using: str = "default") -> float | None:
    """Seconds since the oldest pending outbox row was written; None when none is pending.

    One indexed query (not a counter): poll it from a metrics endpoint or a periodic job.
    """
    from django.utils import timezone

    from django_tiercache.models import PurgeRequest

    oldest = (
        PurgeRequest.objects.using(using)
        .filter(status=PurgeRequest.Status.PENDING)
        .order_by("created")
        .values_list("created", flat=True)
        .first()
    )
    return None if oldest is None else max((timezone.now() - oldest).total_seconds(), 0.0)
