"""Cached QuerySets and the manager that makes them: ``Model.objects.cached()``.

Evaluations of a ``.cached()`` queryset are planned (:mod:`.planner`), then served by the
query tier's service (:mod:`.service`) under the plan's entry name and keys.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Self, TypeVar

import django
from django.core.exceptions import FieldDoesNotExist
from django.db import connections, models, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Max, Q
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
from django_tiercache.keys import (
    normalize_keys,
    row_keys,
    scope_key,
    scope_keys,
    scope_value,
    scoped_fields,
    table_keys,
)
from django_tiercache.query import lazy, planner
from django_tiercache.query.service import _ttl, query_results
from django_tiercache.signals import has_custom_keys, instance_keys, read_scope_keys, register

_M = TypeVar("_M", bound=models.Model)

#: Whether this Django has fetch modes (``QuerySet.fetch_mode()``, Django 6.1).
_FETCH_MODES = django.VERSION >= (6, 1)

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
    #: The query with the first ``n`` recorded operations applied, as Django built it when it
    #: checked them: ``(query, n)``. Shared between copies, so never changed: it is copied first.
    _built: tuple[Query, int] | None = None
    #: The lazy identity of the recorded operations, without a result shape (set when checked).
    _identity: tuple[Any, ...] | None = None

    # Django's private QuerySet API, used because no public hook exists for it. Django has no
    # public way to serve an evaluation from elsewhere (``_fetch_all``, ``_result_cache``,
    # ``_prefetch_done``, ``_iterable_class``, ``_fields``, ``_known_related_objects``), to copy a
    # queryset with extra state (``_clone``), or to build a filter later (``_query``,
    # ``_filter_or_exclude_inplace``, ``_deferred_filter``, ``_sticky_filter``); ``_record()``
    # copies what ``_clone()`` copies (``_db``, ``_hints``, ``_for_write``,
    # ``_prefetch_related_lookups``, and ``_fetch_mode`` from Django 6.1). If a Django release
    # renames one, cached querysets raise AttributeError; if it adds state to ``_clone()``,
    # recorded querysets lose it. tests/test_django_contract.py checks each assumption on every
    # Django in tox.ini, so such a release fails there first.
    if TYPE_CHECKING:  # django-stubs does not declare them
        _query: Query
        _db: str | None
        _hints: dict[str, Any]
        _for_write: bool
        _prefetch_related_lookups: tuple[Any, ...]
        _known_related_objects: dict[Any, dict[Any, Any]]
        _fields: tuple[str, ...] | None
        _deferred_filter: Any
        _sticky_filter: bool
        _fetch_mode: Any

        def _filter_or_exclude_inplace(self, negate: bool, args: Any, kwargs: Any) -> None: ...

    def _clone(self) -> Self:
        # Django's _clone() reads self.query, which applies the recorded operations first.
        clone: Self = super()._clone()  # type: ignore[misc]
        clone._tiercache = self._tiercache
        return clone

    def cached(self, timeout: float | None = None, keys: Iterable[str] = ()) -> Self:
        """Serve this queryset's evaluations from the query tier.

        ``timeout`` (seconds) overrides ``TIERCACHE["TIMEOUT"]``; ``keys`` adds surrogate keys
        the results also depend on (invalidating one of them makes them a miss).
        """
        clone = self.all()
        clone._tiercache = _options(timeout, keys)
        return clone

    def uncached(self) -> Self:
        """This queryset without the query tier."""
        clone = self.all()
        clone._tiercache = None
        return clone

    # -- lazy operations ----------------------------------------------------------------------

    @property
    def query(self) -> Query:
        """The ``Query``, built from the recorded operations first if there are any.

        Whoever reads it may change it, so from then on this queryset is no longer lazy.
        """
        operations, built = self._operations or (), self._built
        self._operations = self._pristine = self._built = self._identity = None
        if built is not None:
            query, applied = built
            operations = operations[applied:]
            self._query = query if operations else query.clone()
        for operation in operations:  # exactly what filter()/order_by()/[a:b] do
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
        self._operations = self._pristine = self._built = self._identity = None
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
        if _FETCH_MODES:
            clone._fetch_mode = self._fetch_mode
        clone._tiercache = self._tiercache
        clone._pristine = self._pristine
        clone._built = self._built
        clone._operations = (*(self._operations or ()), *operations)
        return clone

    def _sliced_lazily(self) -> bool:
        return self._query.is_sliced or "slice" in [op[0] for op in self._operations or ()]

    def _record_checked(
        self, django_method: Callable[..., Any], operation: lazy.Operation, *then: lazy.Operation
    ) -> Self:
        """``self`` with ``operation`` (and ``then``) recorded, once Django's own
        ``django_method`` has applied ``operation`` to this very identity without raising:
        errors are raised where Django raises them. The query Django built then is kept for
        a miss, which would otherwise build it again."""
        clone = self._record(operation, *then)
        if clone._pristine is None:
            clone._pristine = lazy.base_identity(clone._query)
        checked = lazy.identity(clone._pristine, self.model._meta.label, clone._operations or ())
        clone._identity = checked
        if checked not in _checked:
            if len(_checked) >= _plans.size:
                _checked.clear()
            if operation[0] == "filter":
                built: QuerySet[Any] = django_method(self._record(), **operation[3])
            else:
                built = django_method(self._record(), *operation[1])
            _checked.add(checked)
            clone._built = built.query, len(clone._operations or ()) - len(then)
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
        unordered = () if self._query.distinct_fields else (("order_by", ()),)
        clone = self._record_checked(
            QuerySet.filter,
            ("filter", False, lookups, kwargs),
            *unordered,
            ("slice", None, MAX_GET_RESULTS),
        )
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
        prefetch = planner.prefetch_shape(lookups) if lookups else ()
        memo_key: Hashable
        name: str | None
        if self._operations is None:
            memo_key = name = planner.fingerprint(
                self.query, prefetch, options.keys, kind, db, *shape
            )
        else:
            recorded = self._identity or lazy.identity(
                self._pristine or lazy.base_identity(self._query),
                self.model._meta.label,
                self._operations,
            )
            memo_key = lazy.shaped(recorded, kind, db, options.keys, prefetch, *shape)
            name = None
        known = _plans.get(memo_key)
        if known is None:
            name = name or lazy.lazy_name(memo_key)  # type: ignore[arg-type]
            rows = kind == "rows" and self._iterable_class is ModelIterable
            vendor = connections[db].vendor
            new = planner.plan(self.query, lookups, options.keys, name, rows=rows, vendor=vendor)
            known = _plans.remember(memo_key, new)
        elif known.first_use:
            known = _plans.remember(memo_key, replace(known, first_use=False))
        return known

    def _through_tier(self, kind: str, compute: Callable[[Self], Any], *shape: Any) -> Any:
        """``compute(queryset)`` through the query tier: on a miss, ``queryset`` is this one, or
        this one on the write database when the replica it reads may lack a recent change."""
        db = self.db
        query_plan = self._plan(kind, db, shape)
        if (
            self._query.select_for_update
            or not query_plan.cacheable
            # read your own uncommitted writes
            or _writes_pending(db, query_plan.depends_on)
        ):
            _bypassed(self.model, query_plan)
            value = compute(self)
            if query_plan.row_keys is not None:  # the rows' keys belong to the response too
                collector.add_normalized(planner.result_keys(query_plan.row_keys, value))
            return value
        return _TierRead(self, db, query_plan, compute).fetch()

    def _source(
        self, tags: Sequence[str], db: str, depends_on: frozenset[str], stray: list[str]
    ) -> str:
        """The database to compute a miss from (see ``QueryResults.source``); ``stray`` starts
        afresh, with a reason when the result must not be stored."""
        stray.clear()
        write_db = router.db_for_write(self.model, **self._hints)
        source = query_results.source(tags, db, write_db)
        if source != db and _writes_pending(source, depends_on):
            # The write database would show this transaction's uncommitted rows: read as the
            # router says, and store nothing.
            stray.append("uncommitted writes on the write database")
            return db
        return source

    def _fetch_all(self) -> None:
        if self._result_cache is None and self._tiercache is not None:
            lookups = self._prefetch_related_lookups

            def compute(queryset: Self) -> list[Any]:
                rows: list[Any] = [*queryset._iterable_class(queryset)]  # type: ignore[misc]
                if lookups and rows and self._iterable_class is ModelIterable:
                    prefetch_related_objects(rows, *lookups)
                return rows

            # Django 6.1's fetch mode is part of the rows (each keeps it): one entry per mode.
            mode = type(self._fetch_mode).__qualname__ if _FETCH_MODES else None
            rows = self._through_tier(
                "rows", compute, self._iterable_class.__qualname__, self._fields, mode
            )
            self._result_cache = list(rows)
            self._prefetch_done = True
            self._restore_known_related_objects()
            self._restore_peers()
        super()._fetch_all()

    def _restore_peers(self) -> None:
        """Django 6.1's ``FETCH_PEERS``: link the rows as Django's iterable does, so that a
        deferred field or relation of one is fetched for all (the links are not pickled)."""
        if not _FETCH_MODES or not self._fetch_mode.track_peers:
            return
        if self._iterable_class is not ModelIterable:
            return
        # ModelState.peers: Django's private list of weak references to the instances loaded
        # together (ModelIterable sets it); tests/test_django_contract.py checks it.
        peers: list[weakref.ref[models.Model]] = [weakref.ref(r) for r in self._result_cache or ()]
        for row in self._result_cache or ():
            row._state.peers = peers

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
        # super() in the lambda is super(CachedQuerySet, qs): the queryset a miss reads from.
        return int(self._through_tier("count", lambda qs: super().count()))

    def exists(self) -> bool:
        if self._result_cache is not None or self._tiercache is None:
            return super().exists()
        return bool(self._through_tier("exists", lambda qs: super().exists()))

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self._tiercache is None:
            return super().aggregate(*args, **kwargs)

        def compute(queryset: Self) -> dict[str, Any]:
            return super().aggregate(*args, **kwargs)  # super(CachedQuerySet, queryset)

        # By their state, not repr(): Sum("f", default=1) and Sum("f", default=2) print alike.
        shape = planner.digest(args, sorted(kwargs.items()))
        return dict(self._through_tier("aggregate", compute, shape))

    # -- writes through the manager -------------------------------------------------------------

    def update(self, **kwargs: Any) -> int:
        """Update the rows and, on commit, invalidate their object keys, the table keys and the
        scope keys of their values as they are now.

        One read before the update (the primary keys and the scoped values the update leaves
        as they are); a second one only for scoped fields set to an expression, or when the
        model's own keys (``surrogate_keys()``, ``purge_keys``) need whole instances.
        """
        self._for_write = True  # as Django's update(): the write database, reads included
        db, model = self.db, self.model
        with _transaction(db):
            rows = model._base_manager.db_manager(db).filter(pk__in=self.uncached().values("pk"))
            if has_custom_keys(model):
                before = list(rows.iterator())
                count = super().update(**kwargs)
                self._invalidate_rows(before, db)
                return count
            fields = scoped_fields(model)
            written = [f for f in fields if f.name in kwargs or f.attname in kwargs]
            kept = [f for f in fields if f not in written]
            found = list(rows.values_list("pk", *[f.attname for f in kept]))
            count = super().update(**kwargs)
            collect(_updated_keys(model, found, kept, written, kwargs, db), db)
        return count

    def _invalidate_rows(self, before: Sequence[models.Model], db: str) -> None:
        """Keys of ``before`` and of the same rows read again now, scope keys included."""
        rows: QuerySet[models.Model] = self.model._base_manager.db_manager(db).all()
        after = list(rows.filter(pk__in=[o.pk for o in before]).iterator())
        keys = set(table_keys(self.model))
        for row in [*before, *after]:
            keys |= instance_keys(row)
        for row in after:
            keys |= scope_keys(row)[0]
        collect(keys, db)

    def bulk_create(
        self,
        objs: Iterable[_M],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Collection[str] | None = None,
        unique_fields: Collection[str] | None = None,
    ) -> list[_M]:
        """Insert as Django does; invalidate the rows inserted and, with ``update_conflicts``,
        the rows updated as they were and as they are.

        Rows whose primary key the database did not return (``ignore_conflicts``) are found
        after the insert: an automatic key is above the highest one before it.
        """
        objs = list(objs)
        self._for_write = True  # as Django's bulk_create()
        db = self.db
        rows = self.model._base_manager.db_manager(db).all()
        matching = _unique_match(objs, unique_fields) if update_conflicts else None
        with _transaction(db):
            before = list(rows.filter(matching).iterator()) if matching is not None else []
            # Only when the database will not return the keys it gives: one query more.
            auto = _auto_pk(self.model) and (
                ignore_conflicts or not connections[db].features.can_return_rows_from_bulk_insert
            )
            highest = rows.aggregate(high=Max("pk"))["high"] if auto else None
            created = super().bulk_create(
                objs, batch_size, ignore_conflicts, update_conflicts, update_fields, unique_fields
            )
            changed: list[models.Model] = [*before, *(o for o in created if o.pk is not None)]
            if auto and any(o.pk is None for o in created):
                new = rows if highest is None else rows.filter(pk__gt=highest)
                changed += new.iterator()
            if matching is not None:
                changed += rows.filter(matching).iterator()
        keys = set(table_keys(self.model))
        unknown: set[Any] = set()
        everything: list[models.Model] = [*created, *changed]
        for obj in everything:
            scoped, missing = scope_keys(obj)
            keys |= scoped
            if obj.pk is not None:
                keys |= instance_keys(obj)
                unknown.update(missing)
        pks = [obj.pk for obj in changed]
        collect(keys | read_scope_keys(self.model, pks, list(unknown), db), db)
        return created

    def bulk_update(
        self, objs: Iterable[_M], fields: Iterable[str], batch_size: int | None = None
    ) -> int:
        """``bulk_update()``, then invalidate the rows' object keys and the scope keys of their
        values: the written ones from ``objs``, the others (and expressions) read back in one
        query. With the model's own keys, the rows are read before and after as instances."""
        objs, fields = list(objs), list(fields)
        self._for_write = True  # as Django's bulk_update()
        db, model, names = self.db, self.model, set(fields)
        with _transaction(db):
            # Django's bulk_update() runs update() per batch: a plain queryset's, not ours.
            plain: QuerySet[Any] = QuerySet(model=model, using=db)
            if has_custom_keys(model):
                before = list(plain.filter(pk__in=[obj.pk for obj in objs]).iterator())
                count = plain.bulk_update(objs, fields, batch_size=batch_size)
                self._invalidate_rows(before, db)
                return count
            count = plain.bulk_update(objs, fields, batch_size=batch_size)
            written = [f for f in scoped_fields(model) if {f.name, f.attname} & names]
            unknown = {f for f in scoped_fields(model) if f not in written}
            keys = set(table_keys(model))
            for obj in objs:
                keys.update(row_keys(model, obj.pk))
                known, missing = scope_keys(obj, written)
                keys |= known
                unknown.update(missing)
            pks = [obj.pk for obj in objs]
            collect(keys | read_scope_keys(model, pks, list(unknown), db), db)
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


def _auto_pk(model: type[models.Model]) -> bool:
    return isinstance(
        model._meta.pk, models.AutoField | models.BigAutoField | models.SmallAutoField
    )


def _unique_match(objs: Sequence[models.Model], unique_fields: Collection[str] | None) -> Q | None:
    """The rows ``objs`` conflict with on ``unique_fields`` (None when there are none)."""
    if not objs or not unique_fields:
        return None
    meta = objs[0]._meta
    try:
        fields = [meta.pk if name == "pk" else meta.get_field(name) for name in unique_fields]
    except FieldDoesNotExist:
        return None  # Django's bulk_create() raises its own error
    if not all(field in meta.concrete_fields for field in fields):
        return None
    match = Q()
    for obj in objs:
        match |= Q(**{name: _value(obj, name) for name in unique_fields})
    return match


def _value(obj: models.Model, name: str) -> Any:
    field = obj._meta.pk if name == "pk" else obj._meta.get_field(name)
    return getattr(obj, getattr(field, "attname", name))


def _transaction(db: str) -> contextlib.AbstractContextManager[Any]:
    """Around reading rows, writing them and reading them again: the caller's transaction if
    there is one (a block of ours inside it would turn an error Django raises, and the caller
    catches, into a broken transaction), else one of our own."""
    if connections[db].in_atomic_block:
        return contextlib.nullcontext()
    return transaction.atomic(using=db)


def _updated_keys(
    model: type[models.Model],
    rows: list[tuple[Any, ...]],
    kept: list[Any],
    written: list[Any],
    values: dict[str, Any],
    db: str,
) -> set[str]:
    """What ``update(**values)`` of ``rows`` (pk, then the ``kept`` fields' values as read)
    invalidates: table keys, object keys, the scope keys of the rows' values now."""
    if not rows:
        return set(table_keys(model))
    keys = set(table_keys(model))
    for pk, *kept_values in rows:
        keys.update(row_keys(model, pk))
        for field, value in zip(kept, kept_values, strict=True):
            text = scope_value(field, value)  # a value read back is always writable
            if text is not None:
                keys.add(scope_key(field, text))
    unknown = []
    for field in written:
        text = scope_value(field, values.get(field.name, values.get(field.attname)))
        if text is None:
            unknown.append(field)  # an expression: its value is read back
        else:
            keys.add(scope_key(field, text))
    return keys | read_scope_keys(model, [row[0] for row in rows], unknown, db)


#: Row keys each entry had when this process last computed it, and the entry's tags with them
#: (bounded like the plans).
_row_keys: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {}


class _TierRead:
    """One evaluation of a cached queryset through the tier (:meth:`fetch`).

    A miss is computed once (:meth:`compute`), from the write database when the replica the
    router chose may lack a recent change; the SQL it runs tells whether it may be stored
    (:meth:`storable`). A result that depends on its rows' keys is read under the keys its rows
    had when this process last computed it; rows with other keys are stored under those
    (:meth:`retag`), their tokens taken at the store, which is refused if one of them changed
    since the read that preceded the query (see ``QueryResults._store``): served, not stored.
    In the steady state a hit is one round trip, as for any entry.
    """

    def __init__(
        self,
        queryset: CachedQuerySet[Any],
        db: str,
        query_plan: planner.Plan,
        compute: Callable[[Any], Any],
    ) -> None:
        self.queryset, self.db, self.plan, self._compute = queryset, db, query_plan, compute
        self.source = db
        self.seen: set[str] = set()  # tables the SQL named
        self.stray: list[str] = []  # why the result must not be stored
        keyed = query_plan.row_keys is not None
        known = _row_keys.get(query_plan.name) if keyed else None
        self.guess, self.tags = known or (frozenset(), query_plan.tags)

    def fetch(self) -> Any:
        options = self.queryset._tiercache
        assert options is not None
        return query_results.fetch(
            self.plan.name,
            self.tags,
            self.compute,
            options.timeout,
            storable=self.storable,
            expect_miss=self.plan.first_use or query_results.recently_invalidated.any(self.tags),
            retag=None if self.plan.row_keys is None else self.retag,
        )

    def compute(self) -> Any:
        queryset, db = self.queryset, self.db
        self.source = queryset._source(self.tags, db, self.plan.depends_on, self.stray)
        with contextlib.ExitStack() as wrappers:
            wrappers.enter_context(connections[self.source].execute_wrapper(self._capture))
            if self.source == db:
                return self._compute(queryset)
            # What the router still sends to the lagging replica (a prefetch): not stored.
            wrappers.enter_context(connections[db].execute_wrapper(self._lagging))
            return self._compute(queryset.using(self.source))

    def _capture(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.seen.update(planner.tables_in_sql(sql))
        return execute(sql, params, many, context)

    def _lagging(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.stray.append(sql)
        return execute(sql, params, many, context)

    def storable(self) -> bool:
        return (
            _may_store(connections[self.source])
            and self.seen <= self.plan.tables
            and not self.stray
        )

    def retag(self, value: Any) -> Sequence[str]:
        """The tags to store ``value`` under: its rows' keys instead of the guessed ones."""
        assert self.plan.row_keys is not None
        found = frozenset(planner.result_keys(self.plan.row_keys, value))
        collector.add_normalized(found)
        if found <= self.guess:
            return self.tags
        if len(_row_keys) >= _plans.size:
            _row_keys.clear()
        tags = tuple(sorted({*self.plan.tags, *found}))
        _row_keys[self.plan.name] = (found, tags)
        return tags


def _writes_pending(alias: str, keys: frozenset[str]) -> bool:
    """Whether the open transaction on database ``alias`` has written any of ``keys``.

    ``connections[alias]`` (a thread-local lookup) only when some transaction has keys pending:
    a hit outside such a transaction looks up no connection.
    """
    return has_pending_keys() and bool(pending_keys(connections[alias]) & keys)


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
