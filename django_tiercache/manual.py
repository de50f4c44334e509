"""Purges asked for by a person: the ``tiercache_purge`` command and the admin actions.

They take the same road as invalidations caused by data changes, through
:mod:`django_tiercache.invalidation`: a journal row (so nothing is lost when a broker or a CDN is
down), every tier handler at once (the query tier), then the journal consumers (the edge).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from functools import partial

from django.db import transaction
from django.utils import timezone

from django_tiercache import invalidation, journal
from django_tiercache.journal import SKIPPED
from django_tiercache.keys import normalize_keys
from django_tiercache.models import PurgeRequest

__all__ = ["SKIPPED", "request_purge", "retry"]


def request_purge(
    keys: Iterable[str],
    *,
    purge_all: bool = False,
    backends: Collection[str] | None = None,
    using: str = "default",
    dispatch: bool = True,
) -> PurgeRequest:
    """Write a purge request, invalidate the tier handlers, and hand the row to the consumers.

    ``backends`` limits the consumers' targets, e.g. the edge purgers (the others are recorded
    as skipped). The tier handlers are invalidated at once: no data changed, so there is nothing
    to wait for; a failure is recorded on the row for the redrive. With ``dispatch`` the row goes
    to the consumers once the current transaction (if any) commits; without it the caller
    delivers it.
    """
    keys = normalize_keys(keys)
    targets = invalidation.targets()
    skipped = {
        name: {**journal.outcome(), SKIPPED: True}
        for name in targets
        if backends is not None and name not in backends
    }
    row = journal.write(keys, using, purge_all=purge_all, results=skipped, done=not targets)
    failures = invalidation.apply(keys, using=using, purge_all=purge_all)
    if failures:
        invalidation.record(failures, [row.pk], using)
        row.refresh_from_db(fields=["results", "last_error", "tier_missed", "status"])
    if dispatch and targets:
        transaction.on_commit(partial(invalidation.dispatch, [row.pk], using), using=using)
    return row


def retry(row_ids: Iterable[int], using: str = "default") -> list[int]:
    """Invalidate the tier handlers again where they failed, and send pending and failed rows to
    the consumers again; the ids sent (done rows are not).

    A failed row becomes pending: each target that already succeeded is still skipped, so only
    the unfinished ones are called.
    """
    rows = journal.unfinished(using).filter(pk__in=list(row_ids))
    found = list(rows)
    ids = sorted(row.pk for row in found)
    if ids:
        # The tier handlers are retried here and now (one round trip): only the edge is deferred.
        invalidation.reapply(found, using=using)
        PurgeRequest.objects.using(using).bulk_update(found, ["results", "tier_missed"])
        rows.filter(status=PurgeRequest.Status.FAILED).update(
            status=PurgeRequest.Status.PENDING, updated=timezone.now()
        )
        transaction.on_commit(partial(invalidation.dispatch, ids, using), using=using)
    return ids
