"""The edge tier's side of the journal: dispatch committed ``PurgeRequest`` rows, deliver them.

Rows are written by :mod:`django_tiercache.journal` inside the transaction that changed the data,
so a purge exists exactly when the change does. After commit the orchestrator
(:mod:`django_tiercache.invalidation`) hands the row ids to the edge tier's dispatcher
(:mod:`django_tiercache.edge.dispatch`); :func:`deliver` sends the keys to every purger that has
not succeeded yet and records each purger's result on the row.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from django.db import connections, transaction
from django.db.models import Q
from django.utils import timezone

from django_tiercache import invalidation, journal, replicas
from django_tiercache.conf import tiercache_settings
from django_tiercache.edge import events
from django_tiercache.edge.purgers import BasePurger, PurgeResult, get_purgers
from django_tiercache.models import PurgeRequest
from django_tiercache.redact import get_logger

logger = get_logger(__name__)

#: Most rows one redrive task (or :func:`redrive` call) delivers; a larger backlog takes several.
REDRIVE_CHUNK = 500
#: Seconds a delivery holds the rows it claimed (a worker that died frees them after this).
CLAIM_SECONDS = 300
#: The redrive leaves a row alone for 60 s after a failed delivery, doubling with each attempt,
#: at most an hour (or longer when the API asked for it with ``Retry-After``).
REDRIVE_BACKOFF = 60
REDRIVE_BACKOFF_MAX = 3600


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


def claim(row_ids: Iterable[int], using: str, statuses: Sequence[str]) -> list[PurgeRequest]:
    """Take the given rows for one delivery; the rows taken (none that another delivery holds).

    On PostgreSQL (and any database with ``SELECT … FOR UPDATE SKIP LOCKED``) the rows are
    locked and skipped when another delivery is claiming them at the same moment; elsewhere a
    single conditional ``UPDATE`` takes them, which the database runs atomically (SQLite
    serialises writers). A claim lasts ``CLAIM_SECONDS``: a worker that dies mid-delivery frees
    its rows then, for the redrive.
    """
    now = timezone.now()
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    rows = PurgeRequest.objects.using(using)
    wanted = rows.filter(free, pk__in=list(row_ids), status__in=statuses)
    token = uuid.uuid4().hex
    with transaction.atomic(using=using):
        if connections[using].features.has_select_for_update_skip_locked:
            locked = wanted.select_for_update(skip_locked=True).values_list("pk", flat=True)
            wanted = rows.filter(pk__in=list(locked))
        wanted.update(claim=token, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
    return list(rows.filter(claim=token))


def _backoff(attempts: int, retry_after: float | None) -> timedelta:
    """How long the redrive leaves a row alone after its ``attempts``-th failed delivery."""
    wait = min(REDRIVE_BACKOFF_MAX, REDRIVE_BACKOFF * 2 ** max(0, min(attempts - 1, 16)))
    return timedelta(seconds=max(wait, retry_after or 0))


def deliver(
    row_ids: Iterable[int],
    using: str = "default",
    *,
    backends: Iterable[str] | None = None,
    include_failed: bool = False,
) -> dict[str, PurgeResult]:
    """Send the keys of the given pending rows to every purger that has not purged them yet.

    The rows are claimed first (:func:`claim`): rows another delivery holds are left to it.
    Keys of all rows are grouped, so each purger makes ``ceil(keys / max_keys_per_request)``
    calls. Each row records every purger's result; it becomes ``done`` when all succeeded,
    ``failed`` when a purger refused for good, and stays ``pending`` otherwise, with a
    ``next_attempt`` for the redrive. Returns the result per purger that was called. Purges
    wait (at most ``REPLICA_WAIT`` seconds) until the read replicas of ``using`` have applied its
    commits (:mod:`django_tiercache.replicas`).
    """
    statuses = [PurgeRequest.Status.PENDING]
    if include_failed:
        statuses.append(PurgeRequest.Status.FAILED)
    rows = claim(row_ids, using, statuses)
    if not rows:
        return {}
    purgers = get_purgers()
    if backends is not None:
        wanted = set(backends)
        purgers = {name: purger for name, purger in purgers.items() if name in wanted}

    invalidation.reapply(rows, using=using)  # a tier that missed these keys goes first
    if purgers:  # a CDN purged before the replicas apply the change would refill from them
        replicas.wait_until_applied(using, float(tiercache_settings.REPLICA_WAIT))
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
    _record(rows, outcome, using)
    return outcome


def _record(rows: list[PurgeRequest], outcome: dict[str, PurgeResult], using: str) -> None:
    """Save each row's status, error and next attempt, and release the claim."""
    now = timezone.now()
    waits = [r.retry_after for r in outcome.values() if not r.ok and r.retry_after is not None]
    for row in rows:
        row.attempts += 1
        names = [*get_purgers(), *(n for n in invalidation.tier_names() if n in row.results)]
        row.status, row.last_error = _status(row, names)
        pending = row.status == PurgeRequest.Status.PENDING
        row.next_attempt = (
            now + _backoff(row.attempts, max(waits, default=None)) if pending else None
        )
        row.updated, row.claim, row.claimed_until = now, "", None
    fields = ["results", "attempts", "status", "last_error", "updated", "tier_missed"]
    PurgeRequest.objects.using(using).bulk_update(
        rows, [*fields, "next_attempt", "claim", "claimed_until"], batch_size=500
    )


def stale_rows(
    older_than: float = 60,
    using: str = "default",
    *,
    include_failed: bool = False,
    limit: int | None = REDRIVE_CHUNK,
    ignore_backoff: bool = False,
) -> list[int]:
    """Ids of the oldest rows to redrive, at most ``limit``: pending rows created more than
    ``older_than`` s ago whose backoff has passed (any, with ``ignore_backoff``) and that no
    delivery holds; and failed rows too with ``include_failed`` (an operator asked)."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=older_than)
    due = Q(status=PurgeRequest.Status.PENDING)
    if not ignore_backoff:
        due &= Q(next_attempt__isnull=True) | Q(next_attempt__lte=now)
    if include_failed:
        due |= Q(status=PurgeRequest.Status.FAILED)
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    rows = PurgeRequest.objects.using(using).filter(due, free, created__lte=cutoff)
    ids = rows.order_by("created", "pk").values_list("pk", flat=True)
    return list(ids if limit is None else ids[:limit])


def redrive(
    older_than: float = 60, using: str = "default", **deliver_kwargs: Any
) -> dict[str, PurgeResult]:
    """Deliver again the oldest chunk of pending rows older than ``older_than`` seconds whose
    backoff has passed (what the periodic ``redrive_outbox`` task does, synchronously)."""
    return deliver(stale_rows(older_than, using), using, **deliver_kwargs)


def redrive_chunks(
    older_than: float, using: str, *, include_failed: bool, chunks: int
) -> list[list[int]]:
    """What one run of a redrive task hands to delivery tasks: the stale rows (see
    :func:`stale_rows`), at most ``chunks * REDRIVE_CHUNK``, oldest first, in chunks, each
    postponed so that the next run does not hand them out again."""
    row_ids = stale_rows(
        older_than, using, include_failed=include_failed, limit=REDRIVE_CHUNK * chunks
    )
    postpone(row_ids, using)
    return [row_ids[i : i + REDRIVE_CHUNK] for i in range(0, len(row_ids), REDRIVE_CHUNK)]


def postpone(row_ids: Sequence[int], using: str = "default") -> None:
    """Leave rows handed to a delivery alone for ``REDRIVE_BACKOFF`` s (the delivery resets it)."""
    later = timezone.now() + timedelta(seconds=REDRIVE_BACKOFF)
    rows = PurgeRequest.objects.using(using).filter(pk__in=list(row_ids))
    rows.filter(status=PurgeRequest.Status.PENDING).update(next_attempt=later)


def prune(older_than: float, using: str = "default", *, chunk: int = 5000) -> int:
    """Delete ``done`` rows created more than ``older_than`` seconds ago, ``chunk`` rows per
    statement; the number deleted. Pending and failed rows are never pruned."""
    cutoff = timezone.now() - timedelta(seconds=older_than)
    done = PurgeRequest.objects.using(using).filter(
        status=PurgeRequest.Status.DONE, created__lte=cutoff
    )
    deleted = 0
    while ids := list(done.order_by("pk").values_list("pk", flat=True)[:chunk]):
        deleted += PurgeRequest.objects.using(using).filter(pk__in=ids).delete()[0]
    return deleted
