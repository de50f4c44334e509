"""What a cached queryset reads: its cache key and the surrogate keys (tags) it depends on.

Both are computed from the ``Query`` object without compiling SQL. The cache key is a digest of
the pickled query state (plus how the results are shaped); two querysets share an entry only when
their queries are identical.

The tags say which changes make the result wrong, as finely as the plan can prove it:

- a lookup by primary key depends on the object keys of those rows (``shop.product:42``);
- a list of model instances (unsliced, or sliced from the first row) filtered by equality on
  a scoped field depends on that scope key (``shop.product?category_id=3``: a row coming in has
  that value when saved) and on the object keys of the rows it returned (a row going out, or
  changing, is one of them);
- for either, the rows joined by ``select_related`` and the rows of a one-level
  ``prefetch_related`` add their object keys (:class:`RowKeys`, read from the result): their
  foreign key values belong to rows the result already depends on;
- everything else depends on table keys: joins, subqueries, annotations, aggregates and counts
  over a filtered list, anything the planner cannot scope. Coarse, never stale.

When the query is evaluated, the tables its SQL actually touched are checked against the plan
(:func:`tables_in_sql`); a result whose SQL read a table the plan missed is not stored, so a gap
in the plan costs a miss, never a stale read.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import io
import pickle
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models import Field
from django.db.models.expressions import BaseExpression, Col
from django.db.models.fields.related import ForeignObjectRel, ManyToOneRel
from django.db.models.lookups import Exact, In, IsNull, Lookup
from django.db.models.sql.query import Query
from django.db.models.sql.where import AND, WhereNode
from django.utils.functional import cached_property as django_cached_property

from django_tiercache.keys import (
    NULL,
    TEXT_EXACT_VENDORS,
    object_key,
    object_keys,
    scope_key,
    scope_kind,
    scope_value,
    table_key,
)
from django_tiercache.signals import is_tracked

# Query attributes that are sets: pickled in sorted order so that keys agree across processes.
_SET_ATTRIBUTES = ("used_aliases", "subq_aliases", "annotation_select_mask", "extra_select_mask")
_SELECT_RELATED_DEPTH = 5
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*|\"([^\"]+)\"|`([^`]+)`")


@dataclass(frozen=True)
class Prefetched:
    """A one-level ``prefetch_related`` lookup whose rows add their object keys to a result."""

    attribute: str  # the accessor on each row
    many: bool  # a related manager (``.all()``) rather than one instance
    #: For a reverse foreign key: the child's foreign key, whose scope for each row's value
    #: covers children coming in.
    scope_field: Any = None


@dataclass(frozen=True)
class RowKeys:
    """Which keys of a result's rows it depends on (see :func:`result_keys`)."""

    main: bool  # the object keys of the rows themselves
    related: tuple[tuple[str, ...], ...] = ()  # attribute paths of select_related rows
    prefetched: tuple[Prefetched, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The cache name of a queryset evaluation and what it depends on."""

    name: str
    tags: tuple[str, ...]  # sorted, normalised surrogate keys
    tables: frozenset[str]  # db tables the plan expects the SQL to read
    cacheable: bool  # False when a table belongs to a model whose changes are not tracked
    reason: str = ""
    #: Keys whose pending (uncommitted) invalidation means the result must come from the database:
    #: the tags and the table key of every table read.
    depends_on: frozenset[str] = frozenset()
    #: True the first time this process plans the query: a miss is likely.
    first_use: bool = True
    #: Keys that only the result can tell (rows returned, joined, prefetched), or None.
    row_keys: RowKeys | None = None


def _canonical_state(query: Query, state: dict[str, Any]) -> dict[str, Any]:
    for name in _SET_ATTRIBUTES:
        value = state.get(name)
        if isinstance(value, set | frozenset):
            state[name] = tuple(sorted(value, key=repr))
    deferred = state.get("deferred_loading")
    if isinstance(deferred, tuple) and len(deferred) == 2:
        state["deferred_loading"] = (tuple(sorted(deferred[0])), deferred[1])
    return state


_memoised_names: dict[type, frozenset[str]] = {}


def memoised_names(cls: type) -> frozenset[str]:
    """Names of ``cls``'s cached properties: values an evaluation fills in, not query state."""
    names = _memoised_names.get(cls)
    if names is None:
        names = _memoised_names[cls] = frozenset(
            name
            for klass in cls.__mro__
            for name, attr in vars(klass).items()
            if isinstance(attr, cached_property | django_cached_property)
        )
    return names


class _StatePickler(pickle.Pickler):
    """Pickles expressions and queries by their state alone, without memoised values.

    Django caches values such as ``output_field`` on expressions it compiles, and shares some
    expressions (a field's ``Col``) between queries: without this, a query would change its key
    once any query on the same field had been run.
    """

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if isinstance(obj, models.Model):  # SQL uses its primary key, not its changing state
            return _model_reference, (obj._meta.label, obj.pk)
        if isinstance(obj, type):  # by name: a class made in a function has no importable path
            if issubclass(obj, models.Model):  # one of another registry is never cached
                installed = obj._meta.apps is apps
                return _class_reference, ("model", obj._meta.label, installed or id(obj))
            return _class_reference, (obj.__module__, obj.__qualname__)
        if isinstance(obj, Field) or not hasattr(obj, "__dict__"):
            return NotImplemented
        names = memoised_names(cls)
        if not names and not isinstance(obj, Query):
            return NotImplemented
        state = {key: value for key, value in vars(obj).items() if key not in names}
        if isinstance(obj, Query):
            state = _canonical_state(obj, state)
        return object.__new__, (cls,), state


def _model_reference(label: str, pk: Any) -> None:
    """Stands for a model instance in a fingerprint (never called: fingerprints are not loaded)."""


def _class_reference(namespace: str, name: str, *instance: Any) -> None:
    """Stands for a class in a fingerprint: a model by its label, any other class by its module
    and qualified name (never called)."""


def fingerprint(query: Query, *shape: Any) -> str:
    """A digest identifying ``query`` and the shape of its results (kind, db, fields...)."""
    return digest(query, shape)


def digest(*values: Any) -> str:
    """A digest of ``values`` (queries, expressions, literals) by their state, never repr()."""
    buffer = io.BytesIO()
    _StatePickler(buffer, protocol=5).dump(values)
    return hashlib.blake2b(buffer.getbuffer(), digest_size=16).hexdigest()


# -- tables -------------------------------------------------------------------------------------

_tables_lock = threading.Lock()
_models_by_table: dict[str, type[models.Model]] | None = None


def models_by_table() -> dict[str, type[models.Model]]:
    global _models_by_table
    if _models_by_table is None:
        with _tables_lock:
            _models_by_table = {
                m._meta.db_table: m for m in apps.get_models(include_auto_created=True)
            }
    return _models_by_table


def tables_in_sql(sql: str) -> set[str]:
    """Names of model tables that appear in ``sql`` (as words or quoted identifiers)."""
    known = models_by_table()
    found = set()
    for match in _WORD.finditer(sql):
        word = match.group(1) or match.group(2) or match.group(0)
        if word in known:
            found.add(word)
    return found


_PLAIN = (
    str,
    int,
    float,
    decimal.Decimal,
    uuid.UUID,
    datetime.date,
    datetime.time,
    datetime.timedelta,
)


def _plain(value: Any) -> bool:
    """Whether ``value`` is a literal, or a list of literals (never an expression or query)."""
    if value is None or isinstance(value, _PLAIN):
        return True
    return type(value) in (list, tuple, set, frozenset) and all(
        isinstance(item, _PLAIN) for item in value
    )


def _nested_queries(node: Any, depth: int = 0) -> Iterator[Query]:
    """Queries inside a where tree or an expression (subqueries, Exists, __in=queryset)."""
    if depth > 50 or node is None:
        return
    if isinstance(node, Lookup) and isinstance(node.lhs, Col) and _plain(node.rhs):
        return  # column <op> value(s): the common case, nothing nested
    if isinstance(node, Query):
        yield node
        return
    inner = getattr(node, "query", None)
    if isinstance(inner, Query):
        yield inner
        return
    if isinstance(node, WhereNode):
        for child in node.children:
            yield from _nested_queries(child, depth + 1)
        return
    if isinstance(node, BaseExpression):
        for source in node.get_source_expressions():
            yield from _nested_queries(source, depth + 1)
    for side in ("lhs", "rhs"):
        value = getattr(node, side, None)
        if isinstance(value, Query | BaseExpression) or hasattr(value, "query"):
            yield from _nested_queries(value, depth + 1)


def _select_related_models(
    model: type[models.Model], spec: Any, depth: int = 0
) -> Iterator[type[models.Model]]:
    if depth >= _SELECT_RELATED_DEPTH or not spec:
        return
    if spec is True:
        for field in model._meta.concrete_fields:
            if field.is_relation and not field.null and field.related_model is not None:
                related = field.related_model
                assert isinstance(related, type)
                yield related
                yield from _select_related_models(related, True, depth + 1)
        return
    for name, nested in spec.items():
        try:
            target = model._meta.get_field(name).related_model
        except FieldDoesNotExist:  # a reverse one-to-one by related_query_name, etc.
            continue
        if isinstance(target, type):
            yield target
            yield from _select_related_models(target, nested, depth + 1)


def _prefetch_models(
    model: type[models.Model], lookups: Iterable[Any]
) -> Iterator[type[models.Model] | Query]:
    for lookup in lookups:
        path = getattr(lookup, "prefetch_through", lookup)
        queryset = getattr(lookup, "queryset", None)
        if queryset is not None:
            # A Prefetch's queryset keeps its own prefetch_related() lookups only in Django's
            # private _prefetch_related_lookups (no public getter); a rename would hide nested
            # prefetches' tables, so tests/test_django_contract.py checks it.
            yield queryset.query
            yield from _prefetch_models(
                queryset.model, getattr(queryset, "_prefetch_related_lookups", ())
            )
        current = model
        for part in str(path).split("__"):
            try:
                field = current._meta.get_field(part)
            except FieldDoesNotExist:
                break  # a GenericForeignKey or a custom attribute: the SQL check covers it
            related = field.related_model
            if not isinstance(related, type):
                break
            if field.many_to_many:
                through = getattr(field, "through", None) or getattr(
                    field.remote_field, "through", None
                )
                if isinstance(through, type):
                    yield through
            yield related
            current = related


def query_tables(query: Query) -> set[str]:
    """Every table ``query`` may read, without compiling it."""
    tables = joined_tables(query)
    for related in _select_related_models(query.model, query.select_related):  # type: ignore[arg-type]
        tables.add(related._meta.db_table)
    return tables


def joined_tables(query: Query, *, with_base: bool = True) -> set[str]:
    """The tables ``query`` reads except through ``select_related``: its own (unless not
    ``with_base``), joins, parents and subqueries."""
    base = next(iter(query.alias_map), None)
    tables = {query.get_meta().db_table} if with_base else set()
    tables.update(
        join.table_name
        for alias, join in query.alias_map.items()
        if join.table_name and query.alias_refcount.get(alias, 1) and (with_base or alias != base)
    )
    tables.update(query.extra_tables)
    parents = query.model._meta.get_parent_list() if query.model else []
    tables.update(parent._meta.db_table for parent in parents)
    nested: list[Query] = [*_nested_queries(query.where)]
    for annotation in query.annotations.values():
        nested.extend(_nested_queries(annotation))
    nested.extend(query.combined_queries)
    for inner in nested:
        tables |= query_tables(inner)
    return tables


#: Most values an ``__in`` lookup may have and still be scoped (one key per value).
MAX_SCOPE_VALUES = 50


def _main_keys(query: Query, vendor: str) -> tuple[set[str], bool] | None:
    """Keys covering the main table's rows for the WHERE clause, and whether they are object
    keys (a lookup by primary key) rather than scope keys; None when the table key is needed.

    Every condition must compare a column of the main table with literal values (AND-ed, not
    negated): anything else can bring rows in that no key of theirs announces.
    """
    model, where = query.model, query.where
    if (
        model is None
        or not where.children
        or where.negated
        or where.connector != AND
        or query.combinator
        or query.extra_tables
        or model._meta.get_parent_list()
    ):
        return None
    base = next(iter(query.alias_map), None)
    candidates: list[tuple[tuple[Any, ...], set[str]]] = []
    for lookup in where.children:
        if not (
            isinstance(lookup, Lookup)
            and isinstance(lookup.lhs, Col)
            and lookup.lhs.alias == base
            and _plain(lookup.rhs)
        ):
            return None
        field = lookup.lhs.target
        if field is model._meta.pk and isinstance(lookup, Exact | In):
            pks = lookup.rhs if isinstance(lookup, In) else [lookup.rhs]
            if isinstance(pks, list | tuple | set | frozenset) and all(
                isinstance(pk, int | str | uuid.UUID) for pk in pks
            ):
                return {object_key(model, pk) for pk in pks}, True
        keys = _scope_keys_of(lookup, vendor)
        if keys is not None:
            rank = (not field.unique, not field.is_relation, len(keys), field.attname)
            candidates.append((rank, keys))
    if not candidates:
        return None
    return min(candidates, key=lambda candidate: candidate[0])[1], False


def _scope_keys_of(lookup: Lookup, vendor: str) -> set[str] | None:
    """The scope keys one of which a row matching ``lookup`` has, or None if not scopeable."""
    field = lookup.lhs.target
    kind = scope_kind(field)
    if kind is None or (kind == "text" and vendor not in TEXT_EXACT_VENDORS):
        return None
    if isinstance(lookup, IsNull):
        return {scope_key(field, NULL)} if lookup.rhs is True else None
    if isinstance(lookup, Exact):
        values = [lookup.rhs]
    elif isinstance(lookup, In) and isinstance(lookup.rhs, list | tuple | set | frozenset):
        values = list(lookup.rhs)
        if not values or len(values) > MAX_SCOPE_VALUES:
            return None
    else:
        return None
    texts = [scope_value(field, value) for value in values]
    if None in texts:
        return None
    return {scope_key(field, text) for text in texts if text is not None}


def _forward(field: Any) -> bool:
    """A foreign key or one-to-one field of this model (its value is on the row)."""
    return bool(field.concrete and field.is_relation and (field.many_to_one or field.one_to_one))


def _related_paths(
    model: type[models.Model], spec: Any, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], type[models.Model] | None]]:
    """Each ``select_related`` path with its model, or with None where the path is not a
    forward relation (a reverse one-to-one: its table keeps its table key)."""
    if len(prefix) >= _SELECT_RELATED_DEPTH or not spec:
        return
    if spec is True:
        names = {f.name: True for f in model._meta.concrete_fields if _forward(f) and not f.null}
    else:
        names = spec
    for name, nested in names.items():
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            field = None
        related = getattr(field, "related_model", None)
        if field is None or not _forward(field) or not isinstance(related, type):
            yield (*prefix, name), None
            continue
        yield (*prefix, name), related
        yield from _related_paths(related, nested, (*prefix, name))


def _accessor(field: Any) -> str | None:
    return field.get_accessor_name() if isinstance(field, ForeignObjectRel) else field.name


def _prefetched(
    model: type[models.Model], lookup: Any, vendor: str
) -> tuple[Prefetched, set[str]] | None:
    """How the rows of a plain one-level prefetch add their keys, with the tables they cover;
    None for any other lookup (a queryset, ``to_attr``, nested, generic): its tables are tagged."""
    if not isinstance(lookup, str):
        if getattr(lookup, "queryset", None) is not None or lookup.prefetch_to != (
            lookup.prefetch_through
        ):
            return None
        lookup = lookup.prefetch_through
    if "__" in lookup:
        return None
    field: Any = next((f for f in model._meta.get_fields() if _accessor(f) == lookup), None)
    related: Any = getattr(field, "related_model", None)
    if field is None or not (isinstance(related, type) and issubclass(related, models.Model)):
        return None
    if _forward(field):
        return Prefetched(lookup, many=False), {related._meta.db_table}
    if field.many_to_many:
        # ManyToManyRel.through on the reverse side, the field's remote_field.through forward
        through: Any = getattr(field, "through", None) or field.remote_field.through
        if not (
            isinstance(through, type)
            and issubclass(through, models.Model)
            and through._meta.auto_created
        ):
            return None  # an explicit through model: its own rows, its own keys
        return Prefetched(lookup, many=True), {related._meta.db_table, through._meta.db_table}
    if isinstance(field, ManyToOneRel) and not field.one_to_one:
        kind = scope_kind(field.field)
        if kind is None or (kind == "text" and vendor not in TEXT_EXACT_VENDORS):
            return None
        prefetched = Prefetched(lookup, many=True, scope_field=field.field)
        return prefetched, {related._meta.db_table}
    return None


def _orders_across_relations(query: Query) -> bool:
    """Whether the ordering may read another table (a relation, an expression)."""
    meta = query.get_meta()
    ordering = query.order_by or (meta.ordering if query.default_ordering else ())
    for item in ordering or ():
        if not isinstance(item, str) or "__" in item:
            return True
        try:
            if meta.get_field(item.lstrip("-")).is_relation:  # its model's ordering
                return True
        except FieldDoesNotExist:
            pass  # "pk", "?", an annotation: this table
    return False


def result_keys(spec: RowKeys, rows: Iterable[Any]) -> set[str]:
    """The object keys (and reverse foreign key scopes) of the rows in a result, per ``spec``."""
    keys: set[str] = set()
    for row in rows:
        if spec.main:
            keys.update(object_keys(row))
        for path in spec.related:
            related = row
            for name in path:
                related = getattr(related, name)  # cached by select_related: no query
                if related is None:
                    break
            else:
                keys.update(object_keys(related))
        for prefetched in spec.prefetched:
            keys |= _prefetched_keys(prefetched, row)
    return keys


def _prefetched_keys(prefetched: Prefetched, row: Any) -> set[str]:
    value = getattr(row, prefetched.attribute)  # prefetched: no query
    items = value.all() if prefetched.many else [] if value is None else [value]
    keys = {key for item in items for key in object_keys(item)}
    field = prefetched.scope_field
    if field is not None:
        text = scope_value(field, getattr(row, field.target_field.attname))
        keys.add(scope_key(field, text if text is not None else NULL))
    return keys


def _tracked_table(table: str) -> bool:
    model = models_by_table().get(table)
    if model is None:
        return True  # not a model table: nothing to invalidate it with, nothing to check
    if model._meta.auto_created:  # an automatic m2m through table: tracked with either side
        ends = [f.related_model for f in model._meta.concrete_fields if f.is_relation]
        return any(isinstance(end, type) and is_tracked(end) for end in ends)
    return is_tracked(model)


def prefetch_shape(lookups: Iterable[Any]) -> tuple[Any, ...]:
    """``prefetch_related`` lookups in a deterministic form (a ``Prefetch`` by its parts)."""
    shape: list[Any] = []
    for lookup in lookups:
        if isinstance(lookup, str):
            shape.append(lookup)
        else:
            queryset = getattr(lookup, "queryset", None)
            inner = None
            if queryset is not None:  # its own prefetches (private: see _prefetch_models)
                nested = prefetch_shape(getattr(queryset, "_prefetch_related_lookups", ()))
                inner = (fingerprint(queryset.query), nested)
            shape.append((lookup.prefetch_through, lookup.prefetch_to, inner))
    return tuple(shape)


def plan(
    query: Query,
    prefetch: Iterable[Any],
    extra_tags: Iterable[str],
    name: str,
    *,
    rows: bool = False,
    vendor: str = "",
) -> Plan:
    """The tags and expected tables of evaluating ``query``, stored under the entry ``name``
    (the caller's :func:`fingerprint` or lazy name).

    ``rows``: the result is the list of model instances (so it can give its rows' keys);
    ``vendor``: the database's (text equality is exact on some only).
    """
    prefetch = tuple(prefetch)
    tables = query_tables(query)
    for item in _prefetch_models(query.model, prefetch):  # type: ignore[arg-type]
        if isinstance(item, Query):
            tables |= query_tables(item)
        else:
            tables.add(item._meta.db_table)
    known = models_by_table()
    untracked = sorted(t for t in tables if not _tracked_table(t))
    table_tags = {table_key(known[t]) for t in tables if t in known}
    tags, row_keys = _fine_tags(query, prefetch, tables, rows=rows, vendor=vendor)
    if tags is None:
        tags = set(table_tags)
    tags |= set(extra_tags)
    reason = f"reads untracked table(s) {', '.join(untracked)}" if untracked else ""
    if query.model is not None and query.model._meta.apps is not apps:
        # A migration's historical model (or one of isolate_apps): cached rows would come back
        # as instances of the installed model.
        reason = "its model is not the installed one"
    return Plan(
        name=name,
        tags=tuple(sorted(tags)),
        tables=frozenset(tables),
        cacheable=not reason,
        reason=reason,
        depends_on=frozenset(tags | table_tags),
        row_keys=row_keys,
    )


def _fine_tags(
    query: Query, prefetch: tuple[Any, ...], tables: set[str], *, rows: bool, vendor: str
) -> tuple[set[str] | None, RowKeys | None]:
    """Object and scope keys instead of table keys where the plan can prove them (see the
    module docstring), with the table keys of whatever else the query reads; (None, None)
    when the main table itself needs its table key."""
    model = query.model
    main = _main_keys(query, vendor)
    if model is None or main is None:
        return None, None
    keys, by_pk = main
    if not by_pk and not (rows and query.low_mark == 0):
        return None, None
    if _orders_across_relations(query):
        return None, None  # the tables an ordering joins are not in the plan: table keys
    elsewhere = joined_tables(query, with_base=False)  # joins, subqueries: table keys
    covered: set[str] = {model._meta.db_table}
    related: list[tuple[str, ...]] = []
    prefetched: list[Prefetched] = []
    if rows:
        for path, target in _related_paths(model, query.select_related):
            if target is not None and target._meta.db_table not in elsewhere:
                related.append(path)
                covered.add(target._meta.db_table)
        for lookup in prefetch:
            found = _prefetched(model, lookup, vendor)
            if found is not None:
                prefetched.append(found[0])
                covered |= found[1]
    known = models_by_table()
    uncovered = (tables - covered) | elsewhere | _unhandled_prefetch_tables(model, prefetch, vendor)
    keys |= {table_key(known[t]) for t in uncovered if t in known}
    spec = RowKeys(main=not by_pk, related=tuple(related), prefetched=tuple(prefetched))
    return keys, spec if (spec.main or spec.related or spec.prefetched) else None


def _unhandled_prefetch_tables(
    model: type[models.Model], prefetch: tuple[Any, ...], vendor: str
) -> set[str]:
    """Tables read by prefetch lookups that give no row keys (they keep their table keys)."""
    tables: set[str] = set()
    for lookup in prefetch:
        if _prefetched(model, lookup, vendor) is None:
            for item in _prefetch_models(model, [lookup]):
                tables |= query_tables(item) if isinstance(item, Query) else {item._meta.db_table}
    return tables
