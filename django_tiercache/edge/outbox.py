"""The durable purge outbox: write ``PurgeRequest`` rows, dispatch them, deliver them to purgers.

Rows are written inside the transaction that changed the data, so a purge exists exactly when the
change does. After commit the row ids are dispatched (Celery, or inline with ``PURGE_ASYNC =
False``, or a custom ``DISPATCHER``); :func:`deliver` sends the keys to every purger that has not
succeeded yet and records each purger's result on the row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from django_tiercache.conf import tiercache_settings
from django_tiercache.edge import events
from django_tiercache.edge.purgers import BasePurger, PurgeResult, get_purgers
from django_tiercache.models import PurgeRequest
from django_tiercache.redact import redact

logger = logging.getLogger(__name__)

QUERY_TIER = "query"

Dispatcher = Callable[[list[int], str], None]


def write(keys: Iterable[str], using: str, *, force: bool = False) -> list[int]:
    """Write a pending row for ``keys`` when a purger is configured (or ``force``); its id."""
    if not (force or tiercache_settings.PURGERS):
        return []
    row = PurgeRequest.objects.using(using).create(keys=sorted(keys))
    return [row.pk]


def record_query_failure(row_ids: list[int], using: str, exc: BaseException) -> None:
    """Remember that the query tier missed these keys, so the next delivery retries it."""
    result = PurgeResult(ok=False, error=_describe(exc)).as_json()
    try:
        rows = PurgeRequest.objects.using(using).filter(pk__in=row_ids)
        for row in rows:
            row.results[QUERY_TIER] = result
            row.last_error = result["error"]
            row.save(update_fields=["results", "last_error", "updated"])
    except Exception:
        logger.exception("tiercache: could not record the query-tier failure on the outbox")


def _default_dispatcher() -> Dispatcher:
    if tiercache_settings.PURGE_ASYNC:
        from django_tiercache.edge.tasks import enqueue

        return enqueue
    return deliver_quietly


def dispatch(row_ids: list[int], using: str) -> None:
    """Hand committed rows to the edge tier; never raises (the rows stay pending on failure)."""
    path = tiercache_settings.DISPATCHER
    try:
        dispatcher: Dispatcher = import_string(path) if path else _default_dispatcher()
        dispatcher(list(row_ids), using)
    except Exception:
        logger.exception(
            "tiercache: could not dispatch purge request(s) %s; they stay pending for a redrive",
            row_ids,
        )


def deliver_quietly(row_ids: list[int], using: str) -> None:
    """:func:`deliver`, logging instead of raising (the inline dispatcher)."""
    try:
        deliver(row_ids, using)
    except Exception:
        logger.exception("tiercache: delivering purge request(s) %s failed", row_ids)


def _describe(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")


def _call(purger: BasePurger, keys: set[str], purge_all: bool) -> PurgeResult:
    try:
        return purger.purge_all() if purge_all else purger.purge_keys(keys)
    except Exception as exc:
        logger.warning("tiercache: purger %r raised %s", purger.name, _describe(exc))
        return PurgeResult(ok=False, error=_describe(exc))


def retry_query_tier(rows: Sequence[PurgeRequest]) -> None:
    """Invalidate again, in the query tier, the keys of rows whose invalidation failed there."""
    from django_tiercache.query import query_results

    todo = [row for row in rows if row.results.get(QUERY_TIER, {}).get("ok") is False]
    if not todo:
        return
    try:
        if any(row.purge_all for row in todo):
            query_results.invalidate_all()
        else:
            query_results.invalidate({key for row in todo for key in row.keys})
        result = PurgeResult(ok=True)
    except Exception as exc:
        result = PurgeResult(ok=False, error=_describe(exc))
    for row in todo:
        row.results[QUERY_TIER] = result.as_json()


def retry_query_failures(using: str = "default") -> int:
    """Invalidate again the keys of every unfinished row whose query-tier invalidation failed;
    the number of rows retried. Runs when the query-tier cache comes back after an outage."""
    rows = list(
        PurgeRequest.objects.using(using).filter(
            status__in=(PurgeRequest.Status.PENDING, PurgeRequest.Status.FAILED),
            results__query__ok=False,
        )
    )
    if rows:
        retry_query_tier(rows)
        PurgeRequest.objects.using(using).bulk_update(rows, ["results"])
    return len(rows)


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

    retry_query_tier(rows)
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
        names = [*get_purgers(), *([QUERY_TIER] if QUERY_TIER in row.results else [])]
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
