"""The durable journal of invalidations: ``PurgeRequest`` rows that every tier reads.

A row is written inside the transaction that changed the data (so it exists exactly when the
change does), or by an operator's purge. Each tier records its outcome on the row under its own
name in ``results``: the query tier only when its invalidation failed (so it can be applied again
once the cache is back), the edge tier one entry per purger. A row is finished when no tier has
anything left to do; see :mod:`django_tiercache.invalidation` for who writes and who reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import models

from django_tiercache.models import PurgeRequest
from django_tiercache.redact import redact

__all__ = [
    "MAX_KEYS_PER_ROW",
    "SKIPPED",
    "describe",
    "extend",
    "failed_at",
    "forget",
    "mark_missed",
    "outcome",
    "record_failure",
    "unfinished",
    "write",
]

#: Most keys one row holds: a transaction that collects more writes further rows. It bounds the
#: cost of rewriting a row in place (:func:`extend`) as the transaction collects keys.
MAX_KEYS_PER_ROW = 500

#: Marks, in ``PurgeRequest.results``, a target left out on purpose (``--backend``).
SKIPPED = "skipped"

UNFINISHED = (PurgeRequest.Status.PENDING, PurgeRequest.Status.FAILED)


def write(
    keys: Iterable[str],
    using: str,
    *,
    purge_all: bool = False,
    results: dict[str, Any] | None = None,
    done: bool = False,
) -> PurgeRequest:
    """Write a row for ``keys`` (``done`` when no tier will ever read it)."""
    return PurgeRequest.objects.using(using).create(
        keys=sorted(keys),
        purge_all=purge_all,
        results=results or {},
        status=PurgeRequest.Status.DONE if done else PurgeRequest.Status.PENDING,
    )


def extend(row_id: int, keys: Iterable[str], using: str) -> None:
    """Replace the keys of a row written earlier in the same transaction (a superset of them)."""
    PurgeRequest.objects.using(using).filter(pk=row_id).update(keys=sorted(keys))


def describe(exc: BaseException) -> str:
    """An exception as stored on a row and logged: its type and message, secrets redacted."""
    return redact(f"{type(exc).__name__}: {exc}")


def outcome(exc: BaseException | None = None) -> dict[str, Any]:
    """A tier's entry in ``results``: ok, or the redacted error that stopped it."""
    return {"ok": exc is None, "error": "" if exc is None else describe(exc)}


def record_failure(name: str, row_ids: Sequence[int], using: str, exc: BaseException) -> None:
    """Remember on the rows that tier ``name`` missed their keys, so it applies them again.

    A row written ``done`` (no consumer had anything to do) becomes ``pending``: a recovery
    only looks at unfinished rows.
    """
    result = outcome(exc)
    for row in PurgeRequest.objects.using(using).filter(pk__in=list(row_ids)):
        row.results[name] = result
        row.last_error = result["error"]
        row.tier_missed = True
        if row.status == PurgeRequest.Status.DONE:
            row.status = PurgeRequest.Status.PENDING
        row.save(update_fields=["results", "last_error", "tier_missed", "status", "updated"])


def failed_at(name: str, rows: Iterable[PurgeRequest]) -> list[PurgeRequest]:
    """The rows whose invalidation failed in tier ``name``."""
    return [row for row in rows if row.results.get(name, {}).get("ok") is False]


def forget(row: PurgeRequest, targets: Iterable[str]) -> None:
    """Drop the outcomes of ``targets`` on ``row`` (in memory), so that they act on it again;
    targets left out on purpose (:data:`SKIPPED`) stay so."""
    for name in targets:
        if not row.results.get(name, {}).get(SKIPPED):
            row.results.pop(name, None)


def unfinished(using: str, *, missed: bool = False) -> models.QuerySet[PurgeRequest]:
    """Pending and failed rows; with ``missed``, only those a tier missed (an indexed column:
    :func:`failed_at` then says which tier)."""
    rows = PurgeRequest.objects.using(using).filter(status__in=UNFINISHED)
    return rows.filter(tier_missed=True) if missed else rows


def mark_missed(rows: Iterable[PurgeRequest], tiers: Iterable[str]) -> None:
    """Set ``tier_missed`` on each row from its ``results`` for ``tiers`` (in memory)."""
    names = list(tiers)
    for row in rows:
        row.tier_missed = any(row.results.get(name, {}).get("ok") is False for name in names)
