"""Signals sent after each edge purge, for wiring metrics (statsd, Prometheus) and alerts.

Both are sent by :func:`django_tiercache.edge.outbox.deliver` once per purger per delivery, with
``sender`` the purger's class and these keyword arguments:

- ``purger``: the purger's name in ``TIERCACHE["PURGERS"]``;
- ``result``: its :class:`~django_tiercache.purgers.PurgeResult` (``error`` holds no secret);
- ``keys``: a frozenset of the keys sent (empty for a purge of everything);
- ``purge_all``: whether everything was purged;
- ``retry``: whether one of the outbox rows had been attempted before;
- ``row_ids``: the ``PurgeRequest`` ids delivered; ``using``: their database alias.

Receivers run in the delivering process (a Celery worker, or the web process with
``PURGE_ASYNC = False``); an exception in one is logged and never stops the delivery.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.dispatch import Signal

from django_tiercache import stats
from django_tiercache.edge.purgers import BasePurger, PurgeResult
from django_tiercache.models import PurgeRequest
from django_tiercache.redact import get_logger

logger = get_logger(__name__)

#: A purger completed a purge.
purge_completed = Signal()
#: A purger did not complete a purge; ``result.retryable`` says whether it will be retried.
purge_failed = Signal()


def purge_sent(
    purger: BasePurger,
    result: PurgeResult,
    keys: set[str],
    rows: Sequence[PurgeRequest],
    using: str,
) -> None:
    """Count one purge in :mod:`~django_tiercache.stats` and send its signal."""
    purge_all = any(row.purge_all for row in rows)
    retry = any(row.attempts for row in rows)
    stats.incr("purges_sent")
    if retry:
        stats.incr("purges_retried")
    if result.ok:
        stats.incr("keys_purged", 0 if purge_all else len(keys))
    else:
        stats.incr("purges_failed")
    signal = purge_completed if result.ok else purge_failed
    responses = signal.send_robust(
        sender=type(purger),
        purger=purger.name,
        result=result,
        keys=frozenset() if purge_all else frozenset(keys),
        purge_all=purge_all,
        retry=retry,
        row_ids=[row.pk for row in rows],
        using=using,
    )
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error(
                "tiercache: %s receiver %r raised",
                "purge_completed" if result.ok else "purge_failed",
                receiver,
                exc_info=response,
            )
