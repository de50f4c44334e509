"""The surrogate-key vocabulary shared by every tier.

A table key is the concrete model's ``label_lower`` (``shop.product``); an object key adds the
primary key (``shop.product:42``); a scope key names the rows whose field has one value
(``shop.product?category_id=3``, see :func:`scope_key`). Every key that reaches Redis, a response
header or a purge call goes through :func:`normalize_key`, so the three always agree. Which
models are tracked, and the keys a change to an instance invalidates, is decided in
:mod:`django_tiercache.signals`.
"""

from __future__ import annotations

import hashlib
import operator
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.fields import NOT_PROVIDED

__all__ = [
    "KeyFactory",
    "concrete_model",
    "default_keys",
    "key_factory",
    "normalize_key",
    "normalize_keys",
    "object_key",
    "object_keys",
    "scope_key",
    "table_key",
    "table_keys",
]

#: Longest key, in bytes, that any CDN accepts (Fastly and Cloudflare: 1,024).
MAX_KEY_BYTES = 1024
#: Characters of a too-long key kept in front of its digest, for readability.
_DIGEST_PREFIX_CHARS = 200
# Visible ASCII except space (0x20, not visible) and comma (tag separator at Cloudflare).
_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - {","}
_CLEAN = re.compile(rf"[\x21-\x2b\x2d-\x7e]{{1,{MAX_KEY_BYTES}}}")  # visible ASCII but ","

#: Something that turns an instance into keys: ``key_factory(...)`` or any such callable.
KeyFactory = Callable[[Any], Iterable[str]]


def normalize_key(key: str) -> str:
    """Return ``key`` in the form every header and purge API accepts.

    Visible ASCII is kept except the comma; everything else (space, comma, CR, LF, NUL, non-ASCII)
    is percent-encoded as UTF-8. A result over 1,024 bytes becomes its first 200 characters, ``~``
    and a SHA-256 digest of the whole key. Idempotent: ``normalize_key(normalize_key(k))`` equals
    ``normalize_key(k)``, so a key copied from a response header purges exactly that response.

    Raises :class:`TypeError` for a non-string and :class:`ValueError` for an empty key.
    """
    if type(key) is str and _CLEAN.fullmatch(key):  # the common case, in one C call
        return key
    if not isinstance(key, str):
        raise TypeError(f"Surrogate keys must be str, got {type(key).__name__}: {key!r:.100}")
    if not key:
        raise ValueError("Surrogate keys must not be empty")
    if not all(char in _SAFE for char in key):
        key = "".join(
            char if char in _SAFE else "".join(f"%{byte:02X}" for byte in char.encode())
            for char in key
        )
    if len(key) > MAX_KEY_BYTES:  # all ASCII by now: characters == bytes
        digest = hashlib.sha256(key.encode()).hexdigest()
        key = f"{key[:_DIGEST_PREFIX_CHARS]}~{digest}"
    return key


def normalize_keys(keys: Iterable[str]) -> set[str]:
    """Normalise each key; a bare string is refused rather than split into characters."""
    if isinstance(keys, str):
        raise TypeError(f"Expected an iterable of keys, got the string {keys!r:.100}")
    return {normalize_key(key) for key in keys}


def concrete_model(model: type[models.Model] | models.Model) -> type[models.Model]:
    """The model whose table holds rows of ``model`` (itself, or a proxy's concrete model)."""
    concrete = model._meta.concrete_model
    assert concrete is not None  # only abstract models lack one, and they have no table
    return concrete


def table_key(model: type[models.Model] | models.Model) -> str:
    """The key of the table behind ``model`` (a proxy shares its concrete model's key)."""
    return normalize_key(concrete_model(model)._meta.label_lower)


def table_keys(model: type[models.Model] | models.Model) -> list[str]:
    """The keys of every table a row of ``model`` lives in: its own and multi-table parents'."""
    concrete = concrete_model(model)
    return [
        table_key(concrete),
        *(table_key(parent) for parent in concrete._meta.get_parent_list()),
    ]


def object_key(model: type[models.Model] | models.Model, pk: Any) -> str:
    """The key of the row with primary key ``pk`` in ``model``'s table."""
    return normalize_key(f"{concrete_model(model)._meta.label_lower}:{pk}")


def object_keys(instance: models.Model) -> list[str]:
    """The object keys of ``instance``: its own and, with multi-table inheritance, its parents'."""
    return row_keys(type(instance), instance.pk)


def row_keys(model: type[models.Model], pk: Any) -> list[str]:
    """The object keys of the row ``pk`` of ``model`` (its parents' too), without an instance."""
    concrete = concrete_model(model)
    return [object_key(concrete, pk)] + [
        object_key(parent, pk) for parent in concrete._meta.get_parent_list()
    ]


# -- scope keys ---------------------------------------------------------------------------------

#: Between a table key and a scope: ``shop.product?category_id=3``. A model label never holds it,
#: and in an object key it can only come after the ``:``.
SCOPE_SEPARATOR = "?"
#: How a scope key writes SQL NULL: ``shop.product?supplier_id=null``. A text field holding the
#: string "null" shares the key, which only means both are invalidated together.
NULL = "null"
#: Field classes whose equality is text equality (no collation, no padding) on these databases.
_TEXT_FIELDS = (models.CharField, models.SlugField, models.EmailField)
TEXT_EXACT_VENDORS = frozenset({"postgresql", "sqlite"})
_SAFE_ON_DELETE = (
    models.CASCADE,
    models.PROTECT,
    models.RESTRICT,
    models.SET_NULL,
    models.SET_DEFAULT,
    models.DO_NOTHING,
)

ScopeKind = Literal["exact", "text"]


def scope_kind(field: Any) -> ScopeKind | None:
    """Whether rows of ``field``'s model get scope keys for it, and how equal values compare.

    Scoped: foreign keys and one-to-one fields, booleans, and fields with choices, unique or
    indexed: the columns lists are filtered on by equality. Every save invalidates a scope key
    per scoped field, so a plain column (a name, a counter) is left to the table key.

    ``"exact"``: integers, booleans and UUIDs, equal in SQL exactly when equal in Python.
    ``"text"``: char, slug and e-mail fields without a collation of their own, whose SQL equality
    is Python's on PostgreSQL and SQLite only (see :data:`TEXT_EXACT_VENDORS`). A foreign key
    compares as its target field. None for everything else: primary keys (object keys do),
    values the database computes, decimals, floats, dates, JSON...
    """
    if not getattr(field, "concrete", False) or field.primary_key or field.generated:
        return None
    if getattr(field, "db_default", NOT_PROVIDED) is not NOT_PROVIDED:
        return None
    if field.is_relation:
        if not (field.many_to_one or field.one_to_one):
            return None
        if field.remote_field.on_delete not in _SAFE_ON_DELETE:  # SET(...): value unknown
            return None
        return scope_kind_of_target(field.target_field)
    if not (
        isinstance(field, models.BooleanField) or field.choices or field.unique or field.db_index
    ):
        return None
    return scope_kind_of_target(field)


def scope_kind_of_target(field: Any) -> ScopeKind | None:
    if field.is_relation:
        return scope_kind_of_target(field.target_field)
    if isinstance(field, models.BooleanField | models.IntegerField | models.UUIDField):
        return "exact"
    if type(field) in _TEXT_FIELDS and field.db_collation is None:
        return "text"
    return None


def scope_value(field: Any, value: Any) -> str | None:
    """``value`` of ``field`` as a scope key writes it, or None when it cannot be written
    (an expression, a value the field refuses): the caller must then fall back."""
    if isinstance(value, models.Model):
        value = getattr(value, field.target_field.attname, None) if field.is_relation else None
        if value is None:
            return None
    if value is None:
        return NULL
    if hasattr(value, "resolve_expression"):
        return None
    try:
        prepared = field.get_prep_value(value)
    except (TypeError, ValueError, ValidationError):  # not a value this field can hold
        return None
    return str(prepared) if isinstance(prepared, bool | int | str | uuid.UUID) else None


def scope_key(field: Any, value: str) -> str:
    """The key of the rows whose ``field`` holds ``value`` (as :func:`scope_value` wrote it).

    ``<table key>?<column attribute>=<value>``, e.g. ``shop.product?category_id=3``, normalised
    like every key (a long value becomes a digest; two values may share a key, never the reverse).
    """
    model = concrete_model(field.model)
    return normalize_key(f"{model._meta.label_lower}{SCOPE_SEPARATOR}{field.attname}={value}")


def scoped_fields(model: type[models.Model]) -> list[Any]:
    """The concrete fields of ``model`` (parents' included) that have scope keys."""
    fields = _scoped.get(model)
    if fields is None:
        fields = _scoped[model] = [
            f for f in concrete_model(model)._meta.concrete_fields if scope_kind(f) is not None
        ]
    return fields


_scoped: dict[type[models.Model], list[Any]] = {}


def scope_keys(
    instance: models.Model, fields: Iterable[Any] | None = None
) -> tuple[set[str], list[Any]]:
    """Scope keys of ``instance``'s current values, and the scoped fields whose value is unknown.

    Unknown: deferred, or not writable as a key (an expression still unsaved, a refused value).
    ``fields`` limits the fields considered (all scoped fields by default).
    """
    keys: set[str] = set()
    unknown: list[Any] = []
    loaded = vars(instance)
    for field in scoped_fields(type(instance)) if fields is None else fields:
        text = scope_value(field, loaded[field.attname]) if field.attname in loaded else None
        if text is None:
            unknown.append(field)
        else:
            keys.add(scope_key(field, text))
    return keys, unknown


def key_factory(
    fmt: str, iterate_on: str | None = None, if_attr_exists: str | None = None
) -> KeyFactory:
    """Declare keys from an instance, as in Warehouse.

    ``key_factory("shop.category:{obj.category_id}")`` yields the category key of a product.

    ``fmt`` is formatted with ``obj`` (the instance). With ``iterate_on`` (a dotted attribute; a
    related manager is iterated through ``.all()``) one key per item, available as ``itr``. With
    ``if_attr_exists`` (a dotted attribute, available as ``attr``) no key when the attribute is
    missing or None.
    """

    def generate(obj: Any) -> Iterator[str]:
        context: dict[str, Any] = {"obj": obj}
        if if_attr_exists is not None:
            try:
                context["attr"] = operator.attrgetter(if_attr_exists)(obj)
            except (AttributeError, models.ObjectDoesNotExist):
                return
            if context["attr"] is None:
                return
        if iterate_on is None:
            yield fmt.format(**context)
            return
        items = operator.attrgetter(iterate_on)(obj)
        if isinstance(items, models.Manager):
            items = items.all()
        for item in items:
            yield fmt.format(itr=item, **context)

    generate.__qualname__ = f"key_factory({fmt!r})"
    return generate


def default_keys(instance: models.Model) -> list[str]:
    """Object keys plus table keys: what a change to ``instance`` invalidates by default."""
    return object_keys(instance) + table_keys(instance)
