"""What a cached queryset reads: its cache key and the surrogate keys (tags) it depends on.

Both are computed from the ``Query`` object without compiling SQL. The cache key is a digest of
the pickled query state (plus how the results are shaped); two querysets share an entry only when
their queries are identical. The tags are the table keys of every table the query can read —
joins, ``select_related``, subqueries, ``prefetch_related`` — or, for a lookup by primary key on
a single table, the object keys of those rows. When the query is evaluated, the tables its SQL
actually touched are checked against the plan (:func:`tables_in_sql`); a result whose SQL read a
table the plan missed is not stored, so a gap in the plan costs a miss, never a stale read.
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
from django.db.models.lookups import Exact, In, Lookup
from django.db.models.sql.query import Query
from django.db.models.sql.where import WhereNode
from django.utils.functional import cached_property as django_cached_property

from django_tiercache.keys import object_key, table_key
from django_tiercache.signals import is_tracked

# Query attributes that are sets: pickled in sorted order so that keys agree across processes.
_SET_ATTRIBUTES = ("used_aliases", "subq_aliases", "annotation_select_mask", "extra_select_mask")
_SELECT_RELATED_DEPTH = 5
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*|\"([^\"]+)\"|`([^`]+)`")


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
    tables = {query.get_meta().db_table}
    tables.update(
        join.table_name
        for alias, join in query.alias_map.items()
        if join.table_name and query.alias_refcount.get(alias, 1)
    )
    tables.update(query.extra_tables)
    for related in _select_related_models(query.model, query.select_related):  # type: ignore[arg-type]
        tables.add(related._meta.db_table)
    parents = query.model._meta.get_parent_list() if query.model else []
    tables.update(parent._meta.db_table for parent in parents)
    nested: list[Query] = [*_nested_queries(query.where)]
    for annotation in query.annotations.values():
        nested.extend(_nested_queries(annotation))
    nested.extend(query.combined_queries)
    for inner in nested:
        tables |= query_tables(inner)
    return tables


def _pk_values(query: Query) -> list[Any] | None:
    """The primary keys a single-table ``pk=`` / ``pk__in=`` query selects, else None."""
    where = query.where
    if (
        len(where.children) != 1
        or where.negated
        or len(query.alias_map) > 1
        or query.select_related
        or query.combinator
        or query.extra_tables
        or query.model is None
        or query.model._meta.get_parent_list()
    ):
        return None
    lookup = where.children[0]
    if not isinstance(lookup, Exact | In):
        return None
    target = getattr(lookup.lhs, "target", None)
    if target is None or target is not query.model._meta.pk:
        return None
    values = lookup.rhs if isinstance(lookup, In) else [lookup.rhs]
    if not isinstance(values, list | tuple | set | frozenset):
        return None
    if not all(isinstance(v, int | str | uuid.UUID) for v in values):
        return None
    return list(values)


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
            if queryset is not None:  # its own prefetches (nested Prefetch objects) too
                nested = prefetch_shape(getattr(queryset, "_prefetch_related_lookups", ()))
                inner = (fingerprint(queryset.query), nested)
            shape.append((lookup.prefetch_through, lookup.prefetch_to, inner))
    return tuple(shape)


def plan(query: Query, prefetch: Iterable[Any], extra_tags: Iterable[str], name: str) -> Plan:
    """The tags and expected tables of evaluating ``query``, stored under the entry ``name``
    (the caller's :func:`fingerprint` or lazy name)."""
    prefetch = tuple(prefetch)
    tables = query_tables(query)
    for item in _prefetch_models(query.model, prefetch):  # type: ignore[arg-type]
        if isinstance(item, Query):
            tables |= query_tables(item)
        else:
            tables.add(item._meta.db_table)
    known = models_by_table()
    untracked = sorted(t for t in tables if not _tracked_table(t))
    tags = table_tags = {table_key(known[t]) for t in tables if t in known}
    pks = None if prefetch else _pk_values(query)
    if pks is not None and query.model is not None:
        tags = {object_key(query.model, pk) for pk in pks}
    tags = tags | set(extra_tags)
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
    )
