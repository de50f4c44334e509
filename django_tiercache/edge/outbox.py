"""The edge tier's side of the journal: dispatch committed ``PurgeRequest`` rows, deliver them.

Rows are written by :mod:`django_tiercache.journal` inside the transaction that changed the data,
so a purge exists exactly when the change does. After commit the orchestrator
(:mod:`django_tiercache.invalidation`) hands the row ids to the edge tier's dispatcher
(:mod:`django_tiercache.edge.dispatch`); :func:`deliver` sends the keys to every purger that has
not succeeded yet and records each purger's result on the row.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from django_tiercache import invalidation, journal
from django_tiercache.edge import events
from django_tiercache.edge.purgers import BasePurger, PurgeResult, get_purgers
from django_tiercache.models import PurgeRequest
from django_tiercache.redact import get_logger

logger = get_logger(__name__)


def _call(purger: BasePurger, keys: set[str], purge_all: bool) -> PurgeResult:
    try:
        return purger.purge_all() if purge_all else purger.purge_keys(keys)
    except Exception as exc:
        logger.warning("tiercache: purger %r raised %s", purger.name, journal.describe(exc))
        return PurgeResult(ok=False, error=journal.describe(exc))


def _status(row: PurgeRequest, names: Iterable[str]) -> tuple[str, str]:
    outcomes = [row.results.get(name) or {"ok": False} for name in names]
    errors = [str(o.get("error") or "") for o in outcomes if not o.get("ok")]
    if not errors:
        return PurgeRequest.Status.DONE, ""
    if any(not o.get("ok") and o.get("retryable") is False for o in outcomes):
        return PurgeRequest.Status.FAILED, "; ".join(e for e in errors if e)
    return PurgeRequest.Status.PENDING, "; ".join(e for e in errors if e)


def deliver(
    row_ids: Iterable[int],
    using: str = "default",
    *,
    backends: Iterable[str] | None = None,
    include_failed: bool = False,
) -> dict[str, PurgeResult]:
    """Send the keys of the given pending rows to every purger that has not purged them yet.

    Keys of all rows are grouped, so each purger makes ``ceil(keys / max_keys_per_request)``
    calls. Each row records every purger's result; it becomes ``done`` when all succeeded,
    ``failed`` when a purger refused for good, and stays ``pending`` otherwise. Returns the
    result per purger that was called.
    """
    statuses = [PurgeRequest.Status.PENDING]
    if include_failed:
        statuses.append(PurgeRequest.Status.FAILED)
    rows = list(PurgeRequest.objects.using(using).filter(pk__in=list(row_ids), status__in=statuses))
    if not rows:
        return {}
    purgers = get_purgers()
    if backends is not None:
        wanted = set(backends)
        purgers = {name: purger for name, purger in purgers.items() if name in wanted}

    invalidation.reapply(rows)  # a tier that missed these keys goes first
    outcome: dict[str, PurgeResult] = {}
    for name, purger in purgers.items():
        todo = [row for row in rows if not row.results.get(name, {}).get("ok")]
        if not todo:
            continue
        keys = {key for row in todo for key in row.keys}
        result = outcome[name] = _call(purger, keys, any(row.purge_all for row in todo))
        for row in todo:
            row.results[name] = result.as_json()
        events.purge_sent(purger, result, keys, todo, using)

    now = timezone.now()
    for row in rows:
        row.attempts += 1
        names = [*get_purgers(), *(n for n in invalidation.tier_names() if n in row.results)]
        row.status, row.last_error = _status(row, names)
        row.updated = now
    PurgeRequest.objects.using(using).bulk_update(
        rows, ["results", "attempts", "status", "last_error", "updated"], batch_size=500
    )
    return outcome


def stale_rows(
    older_than: float = 60, using: str = "default", *, include_failed: bool = True
) -> list[int]:
    """Ids of rows still pending (and failed, if asked) created more than ``older_than`` s ago."""
    cutoff = timezone.now() - timedelta(seconds=older_than)
    status = Q(status=PurgeRequest.Status.PENDING)
    if include_failed:
        status |= Q(status=PurgeRequest.Status.FAILED)
    rows = PurgeRequest.objects.using(using).filter(status, created__lte=cutoff)
    return list(rows.order_by("created").values_list("pk", flat=True))


def redrive(
    older_than: float = 60, using: str = "default", **deliver_kwargs: Any
) -> dict[str, PurgeResult]:
    """Deliver again every pending or failed row older than ``older_than`` seconds."""
    return deliver(stale_rows(older_than, using), using, include_failed=True, **deliver_kwargs)
