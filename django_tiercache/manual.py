"""Purges asked for by a person: the ``tiercache_purge`` command and the admin actions.

They take the same road as purges caused by data changes: a ``PurgeRequest`` row (so nothing is
lost when a broker or a CDN is down), the query tier first, then the edge through the dispatcher.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from functools import partial

from django.db import transaction
from django.utils import timezone

from django_tiercache.edge import outbox
from django_tiercache.edge.purgers import PurgeResult, get_purgers
from django_tiercache.keys import normalize_keys
from django_tiercache.models import PurgeRequest

__all__ = ["SKIPPED", "request_purge", "retry"]

#: Marks, in ``PurgeRequest.results``, a purger left out on purpose (``--backend``).
SKIPPED = "skipped"


def request_purge(
    keys: Iterable[str],
    *,
    purge_all: bool = False,
    backends: Collection[str] | None = None,
    using: str = "default",
    dispatch: bool = True,
) -> PurgeRequest:
    """Write a purge request, invalidate the query tier, and hand the row to the edge tier.

    ``backends`` limits the edge purgers (the others are recorded as skipped). The query tier is
    invalidated at once: no data changed, so there is nothing to wait for; a failure is recorded
    on the row for the redrive. With ``dispatch`` the row goes to the dispatcher once the
    current transaction (if any) commits; without it the caller delivers it.
    """
    keys = normalize_keys(keys)
    purgers = get_purgers()
    skipped = {
        name: {**PurgeResult(ok=True).as_json(), SKIPPED: True}
        for name in purgers
        if backends is not None and name not in backends
    }
    row = PurgeRequest.objects.using(using).create(
        keys=sorted(keys),
        purge_all=purge_all,
        results=skipped,
        status=PurgeRequest.Status.PENDING if purgers else PurgeRequest.Status.DONE,
    )
    _invalidate_query_tier(row, keys, using)
    if dispatch and purgers:
        transaction.on_commit(partial(outbox.dispatch, [row.pk], using), using=using)
    return row


def _invalidate_query_tier(row: PurgeRequest, keys: set[str], using: str) -> None:
    from django_tiercache.query import query_results

    try:
        if row.purge_all:
            query_results.invalidate_all()
        else:
            query_results.invalidate(keys)
    except Exception as exc:
        outbox.record_query_failure([row.pk], using, exc)
        row.refresh_from_db(fields=["results", "last_error"])


def retry(row_ids: Iterable[int], using: str = "default") -> list[int]:
    """Invalidate the query tier again where it failed, and send pending and failed rows to the
    dispatcher again; the ids sent (done rows are not).

    A failed row becomes pending: each purger that already succeeded is still skipped, so only
    the unfinished ones are called.
    """
    rows = PurgeRequest.objects.using(using).filter(
        pk__in=list(row_ids),
        status__in=(PurgeRequest.Status.PENDING, PurgeRequest.Status.FAILED),
    )
    found = list(rows)
    ids = sorted(row.pk for row in found)
    if ids:
        # The query tier is retried here and now (one round trip): only the edge is deferred.
        outbox.retry_query_tier(found)
        PurgeRequest.objects.using(using).bulk_update(found, ["results"])
        rows.filter(status=PurgeRequest.Status.FAILED).update(
            status=PurgeRequest.Status.PENDING, updated=timezone.now()
        )
        transaction.on_commit(partial(outbox.dispatch, ids, using), using=using)
    return ids
