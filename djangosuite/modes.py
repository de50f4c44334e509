"""The modes the suite runs in: every queryset cached, and how much of the tests' transactions the
query tier sees.

Each mode is installed by :func:`install` in the test process before any test module is loaded.
Models are registered and managers made cached the way a user would (``register()``, a
``CachedQuerySet`` with ``.cached()`` switched on); the transaction modes only change what the
tier is told about the ``TestCase`` transactions, never what Django does with them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from django.apps import apps
from django.db import connections, transaction
from django.db.models.manager import BaseManager
from django.db.models.query import QuerySet
from django.test import TestCase, TransactionTestCase

logger = logging.getLogger(__name__)

MODES = {
    "baseline": "Django as it is (the library installed, no queryset cached)",
    "transactions": "every queryset cached, inside the tests' real transactions (the tier reads "
    "and stores as it would inside any transaction)",
    "autocommit": "every queryset cached, the TestCase transactions hidden from the tier: results "
    "are stored and invalidated as in autocommit; the cache is emptied before each test",
    "served": "autocommit, and every evaluation returns the value read back from the entry it "
    "stored, so Django's assertions check what the cache serves",
    "persistent": "autocommit with the cache kept across tests (the keys of data a test rolls "
    "back are invalidated again): the same query over other data shows key collisions and "
    "tagging gaps",
}


def install(mode: str) -> None:
    """Install ``mode`` (a key of :data:`MODES`)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    if mode == "baseline":
        return
    _cache_every_queryset()
    if os.environ.get("DJANGOSUITE_BREAK_INVALIDATION"):  # proves the suite can see staleness
        from django_tiercache.query import QueryResults

        QueryResults.invalidate = lambda self, keys, using=None: None  # type: ignore[method-assign]
    if mode == "transactions":
        return
    _hide_testcase_transactions()
    if mode == "persistent":
        _invalidate_rolled_back_keys()
    if mode == "served":
        _serve_read_back()


def empties_cache_per_test(mode: str) -> bool:
    return mode in ("transactions", "autocommit", "served")


def empty_cache() -> None:
    from django_tiercache.query import query_results

    query_results.invalidate_all()


# -- every queryset cached ------------------------------------------------------------------------

_classes: dict[type, type] = {}


def _cached_class(cls: type[QuerySet[Any]]) -> type[QuerySet[Any]]:
    """``cls`` made a CachedQuerySet, as a user would: ``class MyQuerySet(CachedQuerySet)``."""
    from django_tiercache.query import CachedQuerySet

    if issubclass(cls, CachedQuerySet):
        return cls
    if cls is QuerySet:
        return CachedQuerySet
    made = _classes.get(cls)
    if made is None:
        attrs = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        made = _classes[cls] = type(cls.__name__, (cls, CachedQuerySet), attrs)
    return made


def _cache_every_queryset() -> None:
    """Every model registered; every manager's queryset cached with ``.cached()`` switched on."""
    from django_tiercache import register

    for model in apps.get_models():
        register(model)

    def get_queryset(self: BaseManager[Any]) -> QuerySet[Any]:
        queryset_class = _cached_class(self._queryset_class)
        queryset = queryset_class(model=self.model, using=self._db, hints=self._hints)
        return queryset.cached()  # type: ignore[attr-defined, no-any-return]

    BaseManager.get_queryset = get_queryset  # type: ignore[method-assign]


# -- the TestCase transactions hidden from the tier ----------------------------------------------


def _only_testcase_blocks(connection: Any) -> bool:
    """Inside the atomic blocks of a TestCase and no other: autocommit as far as the tier goes."""
    blocks = connection.atomic_blocks
    return bool(connection.in_atomic_block and blocks) and all(b._from_testcase for b in blocks)


@contextlib.contextmanager
def _as_autocommit(connection: Any) -> Iterator[None]:
    """The tier sees no transaction while it decides (it only reads the flag)."""
    if not _only_testcase_blocks(connection):
        yield
        return
    connection.in_atomic_block = False
    try:
        yield
    finally:
        connection.in_atomic_block = True


def _patch_everywhere(name: str, original: Callable[..., Any], wrapper: Callable[..., Any]) -> None:
    """Replace ``original`` by ``wrapper`` in every loaded module of the library that holds it."""
    import sys

    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("django_tiercache") and getattr(module, name, None) is original:
            setattr(module, name, wrapper)


def _hide_testcase_transactions() -> None:
    """Writes inside only TestCase blocks invalidate at once, reads there store; the library's
    commit hooks registered in a test's own ``atomic()`` run when that block ends."""
    from django_tiercache import invalidation
    from django_tiercache.query import querysets

    collect, pending_keys = invalidation.collect, invalidation.pending_keys
    may_store = querysets._may_store

    def collect_hidden(keys: Any, using: str | None = None) -> None:
        with _as_autocommit(transaction.get_connection(using)):
            collect(keys, using)

    def pending_hidden(connection: Any) -> set[str]:
        return set() if _only_testcase_blocks(connection) else pending_keys(connection)

    def may_store_hidden(connection: Any) -> bool:
        return _only_testcase_blocks(connection) or may_store(connection)

    _patch_everywhere("collect", collect, collect_hidden)
    _patch_everywhere("pending_keys", pending_keys, pending_hidden)
    _patch_everywhere("_may_store", may_store, may_store_hidden)
    _run_hooks_when_test_blocks_end()


def _run_hooks_when_test_blocks_end() -> None:
    enter, exit_ = transaction.Atomic.__enter__, transaction.Atomic.__exit__

    def patched_enter(self: Any) -> None:
        connection = transaction.get_connection(self.using)
        outermost = not self._from_testcase and _only_testcase_blocks(connection)
        marks = self.__dict__.setdefault("_djsuite_marks", [])
        marks.append(len(connection.run_on_commit) if outermost else None)
        enter(self)

    def patched_exit(self: Any, exc_type: Any, exc: Any, tb: Any) -> None:
        connection = transaction.get_connection(self.using)
        mark = self._djsuite_marks.pop()
        exit_(self, exc_type, exc, tb)
        if mark is None or exc_type is not None or not _only_testcase_blocks(connection):
            return
        if connection.needs_rollback:
            return
        ours = [
            hook
            for hook in connection.run_on_commit[mark:]
            if type(hook[1]).__module__.startswith("django_tiercache")
        ]
        connection.run_on_commit = [h for h in connection.run_on_commit if h not in ours]
        with _as_autocommit(connection):
            for _, hook, _robust in ours:
                hook()

    transaction.Atomic.__enter__ = patched_enter  # type: ignore[method-assign]
    transaction.Atomic.__exit__ = patched_exit  # type: ignore[method-assign]


# -- persistent: keys of rolled-back data invalidated again ---------------------------------------

#: Keys invalidated while only TestCase blocks were open, by connection alias and block depth.
_flushed: dict[str, dict[int, set[str]]] = {}


def _invalidate_rolled_back_keys() -> None:
    """A TestCase rolls its data back without signals: what it invalidated is invalidated again
    after the rollback (and after a TransactionTestCase flushes its tables)."""
    from django_tiercache import invalidation
    from django_tiercache.query import query_results

    flush = invalidation.flush

    def recording_flush(keys: set[str], row_ids: list[int], using: str) -> None:
        depth = len(connections[using].atomic_blocks)
        _flushed.setdefault(using, {}).setdefault(depth, set()).update(keys)
        flush(keys, row_ids, using)

    def again(alias: str, depth: int) -> None:
        levels = _flushed.get(alias, {})
        keys = set().union(*(levels.pop(d) for d in [d for d in levels if d >= depth]))
        if keys:
            query_results.invalidate(keys)

    _patch_everywhere("flush", flush, recording_flush)
    rollback = TestCase._rollback_atomics.__func__  # type: ignore[attr-defined]

    def rollback_atomics(cls: type[TestCase], atomics: dict[str, Any]) -> None:
        depths = {alias: len(connections[alias].atomic_blocks) for alias in atomics}
        rollback(cls, atomics)
        for alias, depth in depths.items():
            again(alias, depth)

    TestCase._rollback_atomics = classmethod(rollback_atomics)  # type: ignore[assignment, method-assign]
    teardown = TransactionTestCase._fixture_teardown

    def fixture_teardown(self: TransactionTestCase) -> None:
        teardown(self)
        for alias in connections:
            again(alias, 0)

    TransactionTestCase._fixture_teardown = fixture_teardown  # type: ignore[method-assign]


# -- served: the value read back from the cache ---------------------------------------------------


def _serve_read_back() -> None:
    from django_tiercache.query import QueryResults

    fetch = QueryResults.fetch

    def served(self: Any, name: str, tags: Any, compute: Any, *args: Any, **kwargs: Any) -> Any:
        value = fetch(self, name, tags, compute, *args, **kwargs)
        found = self.lookup(name, tags)
        return found.entry.value if found.fresh else value

    QueryResults.fetch = served  # type: ignore[method-assign]
