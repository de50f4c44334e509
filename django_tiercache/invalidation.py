"""Collect invalidated keys per transaction and act on them once it commits.

Keys are gathered per database connection and savepoint: Django's ``on_commit`` drops the
callbacks of a rolled-back savepoint or transaction, and the keys collected there vanish with
them. When a transaction commits, the query tier is invalidated first (in this process, at once)
and the edge tier second (the outbox rows written inside the transaction are dispatched). Outside a
transaction both happen immediately.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.dispatch import Signal

from django_tiercache.edge import outbox
from django_tiercache.keys import normalize_keys

logger = logging.getLogger(__name__)

#: Sent after commit, once per batch of invalidated keys: ``keys`` (a frozenset) and ``using``.
keys_invalidated = Signal()


class _Batch:
    """Keys (and outbox rows) collected in one savepoint of one transaction; its own commit hook."""

    __slots__ = ("__weakref__", "done", "keys", "row_ids", "using")

    def __init__(self, using: str) -> None:
        self.using = using
        self.keys: set[str] = set()
        self.row_ids: list[int] = []
        self.done = False

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
        flush(new_keys, outbox.write(new_keys, using=alias), alias)
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
    batch.row_ids.extend(outbox.write(new_keys, using=alias))


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


def _write_quietly(keys: set[str], using: str) -> list[int]:
    try:
        return outbox.write(keys, using, force=True)
    except Exception:
        logger.exception("tiercache: could not write the outbox row for a failed invalidation")
        return []


def flush(keys: set[str], row_ids: list[int], using: str) -> None:
    """Invalidate committed ``keys``: query tier first, then hand the outbox rows to the edge.

    Never raises: a failure is logged and leaves the outbox rows pending for a redrive.
    """
    from django_tiercache.query import query_results

    try:
        query_results.invalidate(keys)
    except Exception as exc:
        logger.exception("tiercache: query-tier invalidation of %d key(s) failed", len(keys))
        # Without a purger there is no row yet: write one, so a redrive re-invalidates these
        # keys once the cache is back instead of serving entries computed before the commit.
        row_ids = row_ids or _write_quietly(keys, using)
        outbox.record_query_failure(row_ids, using, exc)
    if row_ids:
        outbox.dispatch(row_ids, using)
    keys_invalidated.send(sender=None, keys=frozenset(keys), using=using)
