"""Cached QuerySets and the manager that makes them: ``Model.objects.cached()``.

Evaluations of a ``.cached()`` queryset are planned (:mod:`.planner`), then served by the
query tier's service (:mod:`.service`) under the plan's entry name and keys.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Self, TypeVar

from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.manager import BaseManager
from django.db.models.query import (
    MAX_GET_RESULTS,
    ModelIterable,
    QuerySet,
    prefetch_related_objects,
)
from django.db.models.sql.query import Query

from django_tiercache import collector, stats
from django_tiercache.invalidation import collect, has_pending_keys, pending_keys
from django_tiercache.keys import normalize_keys, table_keys
from django_tiercache.query import lazy, planner
from django_tiercache.query.service import _ttl, query_results
from django_tiercache.signals import instance_keys, register

_M = TypeVar("_M", bound=models.Model)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheOptions:
    timeout: float | None
    keys: tuple[str, ...]


class CachedQuerySet(QuerySet[_M]):
    """A QuerySet whose ``.cached()`` evaluations are served from the query tier.

    Served from the cache: iteration and ``list()``, ``get()``, ``first()``/``last()``,
    ``count()``, ``exists()``, ``aggregate()``, ``values()``/``values_list()``, ``in_bulk()`` and
    slices. ``iterator()`` and ``select_for_update()`` always go to the database. ``update()``,
    ``bulk_create()`` and ``bulk_update()`` invalidate the keys of the rows they change.
    """

    _tiercache: CacheOptions | None = None
    #: Operations recorded instead of applied (see django_tiercache.query.lazy); None when not lazy.
    _operations: tuple[lazy.Operation, ...] | None = None
    #: "pristine" when the query is known to be as a plain manager makes it (no check needed).
    _pristine: str | None = None

    if TYPE_CHECKING:  # Django's private QuerySet state, which django-stubs does not declare
        _query: Query
        _db: str | None
        _hints: dict[str, Any]
        _for_write: bool
        _prefetch_related_lookups: tuple[Any, ...]
        _known_related_objects: dict[Any, dict[Any, Any]]
        _fields: tuple[str, ...] | None
        _deferred_filter: Any
        _sticky_filter: bool

        def _chain(self) -> Self: ...
        def _filter_or_exclude_inplace(self, negate: bool, args: Any, kwargs: Any) -> None: ...

    def _clone(self) -> Self:
        clone: Self = super()._clone()  # type: ignore[misc]  # applies pending operations first
        clone._tiercache = self._tiercache
        return clone

    def cached(self, timeout: float | None = None, keys: Iterable[str] = ()) -> Self:
        """Serve this queryset's evaluations from the query tier.

        ``timeout`` (seconds) overrides ``TIERCACHE["TIMEOUT"]``; ``keys`` adds surrogate keys
        the results also depend on (invalidating one of them makes them a miss).
        """
        clone = self._chain()
        clone._tiercache = _options(timeout, keys)
        return clone

    def uncached(self) -> Self:
        """This queryset without the query tier."""
        clone = self._chain()
        clone._tiercache = None
        return clone

    # -- lazy operations ----------------------------------------------------------------------

    @property
    def query(self) -> Query:
        """The ``Query``, built from the recorded operations first if there are any.

        Whoever reads it may change it, so from then on this queryset is no longer lazy.
        """
        operations = self._operations
        self._operations = self._pristine = None
        for operation in operations or ():  # exactly what filter()/order_by()/[a:b] do
            self._query = self._query.chain()
            if operation[0] == "filter":
                self._filter_or_exclude_inplace(operation[1], (), operation[3])
            elif operation[0] == "order_by":
                self._query.clear_ordering(force=True, clear_default=False)
                self._query.add_ordering(*operation[1])
            else:
                self._query.set_limits(operation[1], operation[2])
        return super().query

    @query.setter
    def query(self, value: Query) -> None:
        self._operations = self._pristine = None
        QuerySet.query.fset(self, value)  # type: ignore[attr-defined]

    def _lazy_base(self) -> bool:
        """Whether operations can be recorded on this queryset instead of applied."""
        return (
            self._tiercache is not None
            and self._result_cache is None
            and not self._deferred_filter
            and not self._sticky_filter
            and not self._query.combinator
            and not self._query.select_for_update
        )

    def _record(self, *operations: lazy.Operation) -> Self:
        clone = self.__class__(
            model=self.model, query=self._query, using=self._db, hints=self._hints
        )
        clone._for_write = self._for_write
        clone._prefetch_related_lookups = self._prefetch_related_lookups[:]
        clone._known_related_objects = self._known_related_objects
        clone._iterable_class = self._iterable_class
        clone._fields = self._fields
        clone._tiercache = self._tiercache
        clone._pristine = self._pristine
        clone._operations = (*(self._operations or ()), *operations)
        return clone

    def _sliced_lazily(self) -> bool:
        return self._query.is_sliced or any(op[0] == "slice" for op in self._operations or ())

    def _record_checked(self, django_method: Callable[..., Any], operation: lazy.Operation) -> Self:
        """``self`` with ``operation`` recorded, once Django's own ``django_method`` has applied
        it to this very identity without raising: errors are raised where Django raises them."""
        clone = self._record(operation)
        if clone._pristine is None:
            clone._pristine = lazy.base_identity(clone._query)
        checked = lazy.identity(clone._pristine, self.model._meta.label, clone._operations or ())
        if checked not in _checked:
            if len(_checked) >= _plans.size:
                _checked.clear()
            if operation[0] == "filter":
                django_method(self._record(), **operation[3])
            else:
                django_method(self._record(), *operation[1])
            _checked.add(checked)
        return clone

    def filter(self, *args: Any, **kwargs: Any) -> Self:
        lookups = None if args or not self._lazy_base() else lazy.record_lookups(kwargs)
        if lookups is None or self._sliced_lazily():
            return super().filter(*args, **kwargs)
        return self._record_checked(QuerySet.filter, ("filter", False, lookups, kwargs))

    def exclude(self, *args: Any, **kwargs: Any) -> Self:
        lookups = None if args or not self._lazy_base() else lazy.record_lookups(kwargs)
        if lookups is None or self._sliced_lazily():
            return super().exclude(*args, **kwargs)
        return self._record_checked(QuerySet.exclude, ("filter", True, lookups, kwargs))

    def order_by(self, *field_names: Any) -> Self:
        if not (self._lazy_base() and all(isinstance(f, str) for f in field_names)):
            return super().order_by(*field_names)
        if self._sliced_lazily():
            return super().order_by(*field_names)  # raises as Django does
        return self._record_checked(QuerySet.order_by, ("order_by", tuple(field_names)))

    def __getitem__(self, k: Any) -> Any:
        if (
            isinstance(k, slice)
            and self._lazy_base()
            and k.step is None
            and all(v is None or (isinstance(v, int) and v >= 0) for v in (k.start, k.stop))
        ):
            return self._record(("slice", k.start, k.stop))
        return super().__getitem__(k)

    def get(self, *args: Any, **kwargs: Any) -> _M:
        lookups = None if args or not self._lazy_base() else lazy.record_lookups(kwargs)
        if lookups is None or self._sliced_lazily():
            return super().get(*args, **kwargs)
        # Django's get(): filter, drop the ordering (kept for DISTINCT ON), fetch at most
        # MAX_GET_RESULTS rows.
        clone = self._record_checked(QuerySet.filter, ("filter", False, lookups, kwargs))
        if not self._query.distinct_fields:
            clone = clone._record(("order_by", ()))
        clone = clone._record(("slice", None, MAX_GET_RESULTS))
        rows = len(clone)
        if rows == 1:
            return clone._result_cache[0]  # type: ignore[index]
        model: Any = self.model
        if not rows:
            raise model.DoesNotExist(
                f"{self.model._meta.object_name} matching query does not exist."
            )
        raise model.MultipleObjectsReturned(
            f"get() returned more than one {self.model._meta.object_name} -- it returned "
            f"{rows if rows < MAX_GET_RESULTS else f'more than {MAX_GET_RESULTS - 1}'}!"
        )

    # -- evaluation ---------------------------------------------------------------------------

    def _plan(self, kind: str, db: str, shape: tuple[Any, ...]) -> planner.Plan:
        options = self._tiercache
        assert options is not None
        lookups = self._prefetch_related_lookups
        prefetch = planner.prefetch_shape(lookups)
        memo_key: Hashable
        name: str | None
        if self._operations is None:
            memo_key = name = planner.fingerprint(
                self.query, prefetch, options.keys, kind, db, *shape
            )
        else:
            base = self._pristine or lazy.base_identity(self._query)
            label = self.model._meta.label
            memo_key = lazy.identity(
                base, label, self._operations, kind, db, options.keys, prefetch, *shape
            )
            name = None
        known = _plans.get(memo_key)
        if known is None:
            name = name or lazy.lazy_name(memo_key)  # type: ignore[arg-type]
            known = _plans.remember(memo_key, planner.plan(self.query, lookups, options.keys, name))
        elif known.first_use:
            known = _plans.remember(memo_key, replace(known, first_use=False))
        return known

    def _through_tier(self, kind: str, compute: Callable[[], Any], *shape: Any) -> Any:
        options = self._tiercache
        assert options is not None
        db = self.db
        query_plan = self._plan(kind, db, shape)
        if (
            self._query.select_for_update
            or not query_plan.cacheable
            # read your own uncommitted writes
            or (has_pending_keys() and pending_keys(connections[db]) & query_plan.depends_on)
        ):
            _bypassed(self.model, query_plan)
            return compute()
        seen: set[str] = set()

        def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            seen.update(planner.tables_in_sql(sql))
            return execute(sql, params, many, context)

        def compute_capturing() -> Any:
            with connections[db].execute_wrapper(capture):
                return compute()

        return query_results.fetch(
            query_plan.name,
            query_plan.tags,
            compute_capturing,
            options.timeout,
            storable=lambda: _may_store(connections[db]) and seen <= query_plan.tables,
            expect_miss=query_plan.first_use
            or query_results.recently_invalidated.any(query_plan.tags),
        )

    def _fetch_all(self) -> None:
        if self._result_cache is None and self._tiercache is not None:
            lookups = self._prefetch_related_lookups

            def compute() -> list[Any]:
                rows: list[Any] = [*self._iterable_class(self)]  # type: ignore[misc]
                if lookups and rows and self._iterable_class is ModelIterable:
                    prefetch_related_objects(rows, *lookups)
                return rows

            rows = self._through_tier(
                "rows", compute, self._iterable_class.__qualname__, self._fields
            )
            self._result_cache = list(rows)
            self._prefetch_done = True
            self._restore_known_related_objects()
        super()._fetch_all()

    def _restore_known_related_objects(self) -> None:
        """Point cached rows at the caller's related instances, as Django's iterable does."""
        if not self._known_related_objects or self._iterable_class is not ModelIterable:
            return
        for field, instances in self._known_related_objects.items():
            for row in self._result_cache or ():
                related = instances.get(getattr(row, field.attname))
                if related is not None:
                    setattr(row, field.name, related)

    def count(self) -> int:
        if self._result_cache is not None or self._tiercache is None:
            return super().count()
        return int(self._through_tier("count", super().count))

    def exists(self) -> bool:
        if self._result_cache is not None or self._tiercache is None:
            return super().exists()
        return bool(self._through_tier("exists", super().exists))

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self._tiercache is None:
            return super().aggregate(*args, **kwargs)
        compute = functools.partial(super().aggregate, *args, **kwargs)
        # By their state, not repr(): Sum("f", default=1) and Sum("f", default=2) print alike.
        shape = planner.digest(args, sorted(kwargs.items()))
        return dict(self._through_tier("aggregate", compute, shape))

    # -- writes through the manager -------------------------------------------------------------

    def update(self, **kwargs: Any) -> int:
        """Update the rows and, on commit, invalidate their keys as they were and as they are."""
        self._for_write = True  # as Django's update(): the write database, reads included
        db = self.db
        with _transaction(db):
            rows = self.model._base_manager.db_manager(db)
            before = list(rows.filter(pk__in=self.uncached().values("pk")).iterator())
            count = super().update(**kwargs)
            self._invalidate_rows(before, db)
        return count

    def _invalidate_rows(self, before: Sequence[models.Model], db: str) -> None:
        rows: QuerySet[models.Model] = self.model._base_manager.db_manager(db).all()
        after = list(rows.filter(pk__in=[o.pk for o in before]).iterator())
        keys = set(table_keys(self.model))
        for row in [*before, *after]:
            keys |= instance_keys(row)
        collect(keys, db)

    def bulk_create(self, objs: Iterable[_M], *args: Any, **kwargs: Any) -> list[_M]:
        created = super().bulk_create(objs, *args, **kwargs)
        keys = set(table_keys(self.model))
        for obj in created:
            if obj.pk is not None:
                keys |= instance_keys(obj)
        collect(keys, self.db)
        return created

    def bulk_update(
        self, objs: Iterable[_M], fields: Iterable[str], batch_size: int | None = None
    ) -> int:
        objs = list(objs)
        self._for_write = True  # as Django's bulk_update()
        db = self.db
        with _transaction(db):
            rows = self.model._base_manager.db_manager(db)
            before = list(rows.filter(pk__in=[obj.pk for obj in objs]).iterator())
            count = super().bulk_update(objs, fields, batch_size=batch_size)
            self._invalidate_rows(before, db)
        return count


class TierCacheManager(models.Manager.from_queryset(CachedQuerySet)):  # type: ignore[misc]
    """The manager of models whose querysets can be ``.cached()``.

    A model that uses it is tracked even without :class:`SurrogateKeyMixin`: its changes
    invalidate its object and table keys.
    """

    def cached(self, timeout: float | None = None, keys: Iterable[str] = ()) -> CachedQuerySet[Any]:
        """``get_queryset().cached(...)``; see :meth:`CachedQuerySet.cached`."""
        queryset: CachedQuerySet[Any] = self.get_queryset()
        if type(self).get_queryset is not BaseManager.get_queryset:
            return queryset.cached(timeout, keys)
        # A fresh queryset of a plain manager: nothing to copy, and its query filters nothing.
        queryset._tiercache = _options(timeout, keys)
        queryset._pristine, queryset._operations = "pristine", ()
        return queryset

    def contribute_to_class(self, cls: type[models.Model], name: str) -> None:
        super().contribute_to_class(cls, name)
        if not cls._meta.abstract:
            register(cls)


def _options(timeout: float | None, keys: Iterable[str]) -> CacheOptions:
    if timeout is None and not keys:
        return _DEFAULT_OPTIONS
    if timeout is not None:
        _ttl(timeout)  # a bad timeout fails at the call site, not at evaluation
    return CacheOptions(timeout, tuple(sorted(normalize_keys(keys))) if keys else ())


_DEFAULT_OPTIONS = CacheOptions(None, ())


class _PlanMemo:
    """Plans by entry name or lazy identity, so that a hit never builds the query (bounded)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._plans: dict[Hashable, planner.Plan] = {}

    def get(self, key: Hashable) -> planner.Plan | None:
        return self._plans.get(key)

    def remember(self, key: Hashable, plan: planner.Plan) -> planner.Plan:
        if len(self._plans) >= self.size:
            self._plans.clear()
        self._plans[key] = plan
        return plan


_plans = _PlanMemo()
#: Lazy identities Django has built once without raising (bounded like the plans).
_checked: set[tuple[Any, ...]] = set()


def _transaction(db: str) -> contextlib.AbstractContextManager[Any]:
    """Around reading rows, writing them and reading them again: the caller's transaction if
    there is one (a block of ours inside it would turn an error Django raises, and the caller
    catches, into a broken transaction), else one of our own."""
    if connections[db].in_atomic_block:
        return contextlib.nullcontext()
    return transaction.atomic(using=db)


def _may_store(connection: BaseDatabaseWrapper) -> bool:
    """Whether a result read now may be stored: not inside a snapshot that can predate a commit.

    Outside a transaction every statement sees all commits made before it. Inside one, only
    PostgreSQL's default READ COMMITTED does; other databases keep an older snapshot.
    """
    if not connection.in_atomic_block:
        return True
    if connection.vendor != "postgresql":
        return False
    level = connection.settings_dict.get("OPTIONS", {}).get("isolation_level")
    return level in (None, 1)  # psycopg IsolationLevel.READ_COMMITTED == 1


def _bypassed(model: type[models.Model], query_plan: planner.Plan) -> None:
    """A read from the database: the response still depends on what it read. Its keys go to the
    request; one that read untracked tables cannot be purged, so it is marked not edge-cacheable.
    """
    stats.incr("query_bypasses")
    scope = collector.current()
    if scope is not None:
        scope.keys.update(query_plan.tags)
        if not query_plan.cacheable:
            scope.unpurgeable = f"a {model._meta.label} query {query_plan.reason}"
    if not query_plan.cacheable:
        _warn_once(model, query_plan.reason)


_warned: set[tuple[str, str]] = set()


def _warn_once(model: type[models.Model], reason: str) -> None:
    marker = (model._meta.label, reason)
    if marker not in _warned:
        _warned.add(marker)
        logger.warning(
            "tiercache: %s queries are not cached: %s. Add SurrogateKeyMixin or "
            "django_tiercache.register() to those models.",
            model._meta.label,
            reason,
        )
