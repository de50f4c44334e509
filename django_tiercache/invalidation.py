"""The single orchestrator of "after commit": the query tier first, the edge second.

Keys are gathered per database connection and savepoint: Django's ``on_commit`` drops the
callbacks of a rolled-back savepoint or transaction, and the keys collected there vanish with
them. When a transaction commits, :func:`flush` invalidates every :class:`TierHandler` at once (the
query tier, in this process), then hands the journal rows written inside the transaction to every
:class:`JournalConsumer` (the edge tier's dispatcher). Outside a transaction both happen
immediately. Manual purges (:mod:`django_tiercache.manual`), deliveries and recovery after an
outage take the same steps: :func:`apply`, :func:`dispatch`, :func:`reapply`.

This module never imports a tier: each tier registers its handler from ``AppConfig.ready()``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.dispatch import Signal

from django_tiercache import journal
from django_tiercache.keys import normalize_keys
from django_tiercache.models import PurgeRequest
from django_tiercache.redact import get_logger

logger = get_logger(__name__)

#: Sent after commit, once per batch of invalidated keys: ``keys`` (a frozenset) and ``using``.
keys_invalidated = Signal()


@dataclass(frozen=True)
class TierHandler:
    """A tier invalidated at once, in this process, when a change commits (the query tier).

    ``invalidate(keys, using)`` (``using``: the database the change was committed to) and
    ``invalidate_all()`` raise when the tier cannot be reached: the failure is recorded on the
    journal row under ``name`` and applied again by :func:`reapply`.
    """

    name: str
    invalidate: Callable[[set[str], str], None]
    invalidate_all: Callable[[], None]


@dataclass(frozen=True)
class JournalConsumer:
    """A tier that acts later on committed journal rows (the edge tier, through a dispatcher).

    ``targets()`` names what it delivers to (the configured purgers): a journal row is written
    only when some consumer has a target. ``dispatch(row_ids, using)`` never raises.
    """

    name: str
    targets: Callable[[], Sequence[str]]
    dispatch: Callable[[list[int], str], None]


_tiers: dict[str, TierHandler] = {}
_consumers: dict[str, JournalConsumer] = {}


def register_tier(handler: TierHandler) -> None:
    """Invalidate ``handler`` on every commit, after the tiers registered before it."""
    _tiers[handler.name] = handler


def register_consumer(consumer: JournalConsumer) -> None:
    """Hand committed journal rows to ``consumer``, after every :class:`TierHandler`."""
    _consumers[consumer.name] = consumer


def tier_names() -> list[str]:
    """Names of the tiers invalidated at once, in order (their entries in ``results``)."""
    return list(_tiers)


def targets() -> list[str]:
    """Everything the journal consumers deliver to (e.g. the purger names)."""
    return [target for consumer in _consumers.values() for target in consumer.targets()]


class _Batch:
    """Keys (and journal rows) collected in one savepoint of one transaction; its own commit hook.

    The batch writes one journal row and rewrites it in place as keys come (a new row once it
    holds ``journal.MAX_KEYS_PER_ROW``): one row per transaction, not one per saved instance.
    """

    __slots__ = ("__weakref__", "done", "keys", "row_ids", "row_keys", "using")

    def __init__(self, using: str) -> None:
        self.using = using
        self.keys: set[str] = set()
        self.row_ids: list[int] = []
        self.row_keys: set[str] = set()  # the keys of the last row of row_ids
        self.done = False

    def journal(self, new_keys: set[str]) -> None:
        """Record ``new_keys`` in this batch's journal row, inside the transaction."""
        if not targets():
            return
        if self.row_ids and len(self.row_keys) + len(new_keys) <= journal.MAX_KEYS_PER_ROW:
            self.row_keys |= new_keys
            journal.extend(self.row_ids[-1], self.row_keys, self.using)
        else:
            self.row_keys = set(new_keys)
            self.row_ids.append(journal.write(self.row_keys, self.using).pk)

    def __call__(self) -> None:
        """On commit: flush this batch with every other batch of the transaction still alive.

        Django runs the commit hooks of all savepoints that were not rolled back, so every
        batch alive now belongs to the committed transaction: the first hook flushes them all
        at once (one version bump, one dispatch) and the others find nothing left to do.
        """
        if self.done:
            return
        keys: set[str] = set()
        row_ids: list[int] = []
        for batch in [self, *list(_batches.get(connections[self.using], {}).values())]:
            if not batch.done:
                batch.done = True
                _live.discard(batch)
                keys |= batch.keys
                row_ids.extend(batch.row_ids)
        flush(keys, row_ids, self.using)


# connection -> savepoint ids -> batch. Only Django's on_commit list holds a batch strongly, so a
# batch disappears from here the moment Django discards it (rollback) or has run it (commit).
_batches: weakref.WeakKeyDictionary[
    BaseDatabaseWrapper, weakref.WeakValueDictionary[tuple[str | None, ...], _Batch]
] = weakref.WeakKeyDictionary()
# Every batch not flushed yet, of any connection: lets reads skip the lookup when there is none.
_live: weakref.WeakSet[_Batch] = weakref.WeakSet()


def collect(keys: Iterable[str], using: str | None = None) -> None:
    """Invalidate ``keys`` when the current transaction on ``using`` commits (now, outside one)."""
    new_keys = normalize_keys(keys)
    if not new_keys:
        return
    connection = transaction.get_connection(using)
    alias = connection.alias
    if not connection.in_atomic_block:
        flush(new_keys, _journal(new_keys, alias), alias)
        return

    batches = _batches.setdefault(connection, weakref.WeakValueDictionary())
    # atomic(savepoint=False) adds None: such a block can only roll back its whole transaction.
    sids = tuple(sid for sid in connection.savepoint_ids if sid is not None)
    # A key already collected by this savepoint or an enclosing one is invalidated by that commit.
    for depth in range(len(sids) + 1):
        enclosing = batches.get(sids[:depth])
        if enclosing is not None and not enclosing.done:
            new_keys -= enclosing.keys
    if not new_keys:
        return
    batch = batches.get(sids)
    if batch is None or batch.done:
        batch = batches[sids] = _Batch(alias)
        _live.add(batch)
        transaction.on_commit(batch, using=alias)
    batch.keys |= new_keys
    batch.journal(new_keys)


def has_pending_keys() -> bool:
    """Whether any open transaction of this process has collected keys (a cheap pre-check)."""
    return bool(_live)


def pending_keys(connection: BaseDatabaseWrapper) -> set[str]:
    """Keys written by the open transaction on ``connection`` and not yet committed."""
    batches = _batches.get(connection)
    if not batches or not connection.in_atomic_block:
        return set()
    return {key for batch in list(batches.values()) if not batch.done for key in batch.keys}


def invalidate(*keys: str, using: str | None = None) -> None:
    """Invalidate ``keys`` at every tier once the current transaction commits.

    For changes the model signals do not see (raw SQL, another process's data). Outside a
    transaction the query tier is invalidated at once and the edge purge is dispatched.
    """
    collect(keys, using)


def _journal(keys: set[str], using: str) -> list[int]:
    """A journal row for ``keys`` when a consumer will read it; its id."""
    return [journal.write(keys, using).pk] if targets() else []


def apply(
    keys: set[str], *, using: str = DEFAULT_DB_ALIAS, purge_all: bool = False
) -> dict[str, Exception]:
    """Invalidate ``keys`` (or everything) in every tier handler now; the failures by tier.

    ``using`` is the database the change was committed to."""
    failures: dict[str, Exception] = {}
    for tier in _tiers.values():
        try:
            if purge_all:
                tier.invalidate_all()
            else:
                tier.invalidate(keys, using)
        except Exception as exc:
            logger.exception(
                "tiercache: %s-tier invalidation of %d key(s) failed", tier.name, len(keys)
            )
            failures[tier.name] = exc
    return failures


def record(failures: dict[str, Exception], row_ids: Sequence[int], using: str) -> None:
    """Record each tier's failure on the journal rows; never raises (the failure is logged)."""
    for name, exc in failures.items():
        try:
            journal.record_failure(name, row_ids, using, exc)
        except Exception:
            logger.exception("tiercache: could not record the %s-tier failure in the journal", name)


def dispatch(row_ids: Sequence[int], using: str) -> None:
    """Hand committed journal rows to every consumer (the edge purges them)."""
    for consumer in _consumers.values():
        consumer.dispatch(list(row_ids), using)


def _write_quietly(keys: set[str], using: str) -> list[int]:
    try:
        return [journal.write(keys, using).pk]
    except Exception:
        logger.exception("tiercache: could not write the journal row for a failed invalidation")
        return []


def flush(keys: set[str], row_ids: list[int], using: str) -> None:
    """Invalidate committed ``keys``: every tier handler first, then the consumers get the rows.

    Never raises: a failure is logged and recorded on the journal rows for :func:`reapply`.
    """
    failures = apply(keys, using=using)
    if failures:
        # Without a consumer there is no row yet: write one, so a recovery re-invalidates these
        # keys once the cache is back instead of serving entries computed before the commit.
        row_ids = row_ids or _write_quietly(keys, using)
        record(failures, row_ids, using)
    if row_ids:
        dispatch(row_ids, using)
    keys_invalidated.send(sender=None, keys=frozenset(keys), using=using)


def reapply(
    rows: Sequence[PurgeRequest],
    tiers: Iterable[str] | None = None,
    *,
    using: str = DEFAULT_DB_ALIAS,
) -> None:
    """Invalidate again, in each tier (of ``tiers``), the keys of the rows whose invalidation
    failed there; ``using`` is the database the rows (and their changes) live in.

    Where that succeeds, the consumers' outcomes are forgotten: what they did before (an edge
    purge) came before this tier was fresh, so a CDN may have refilled from its stale entries;
    the next delivery does it again. Updates ``results`` and ``tier_missed`` in memory; the
    caller saves the rows.
    """
    for name, tier in _tiers.items():
        todo = journal.failed_at(name, rows) if tiers is None or name in tiers else []
        if not todo:
            continue
        try:
            if any(row.purge_all for row in todo):
                tier.invalidate_all()
            else:
                tier.invalidate({key for row in todo for key in row.keys}, using)
            result = journal.outcome()
        except Exception as exc:
            result = journal.outcome(exc)
        for row in todo:
            row.results[name] = result
            if result["ok"]:
                journal.forget(row, targets())
    journal.mark_missed(rows, _tiers)


class RecoveryFailed(Exception):
    """A tier's invalidations missed earlier failed again (they stay in the journal)."""


def recover(using: str = "default", *, tier: str | None = None) -> int:
    """Reapply every unfinished journal row that a tier (or only ``tier``) missed; the number of
    rows.

    A tier calls this with its name before it serves anything again after a failure, and
    periodically for failures seen by other processes: with ``tier``, raises
    :class:`RecoveryFailed` (the rows saved with the new error) when that tier fails again.
    """
    names = list(_tiers) if tier is None else [name for name in _tiers if name == tier]
    if not names:
        return 0
    rows = [
        row
        for row in journal.unfinished(using, missed=True)
        if any(row.results.get(name, {}).get("ok") is False for name in names)
    ]
    if rows:
        reapply(rows, names, using=using)
        PurgeRequest.objects.using(using).bulk_update(rows, ["results", "tier_missed"])
        if tier is not None and journal.failed_at(tier, rows):
            raise RecoveryFailed(rows[0].results[tier].get("error", ""))
    return len(rows)
