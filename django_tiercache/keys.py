"""The surrogate-key vocabulary shared by every tier.

A table key is the concrete model's ``label_lower`` (``shop.product``); an object key adds the
primary key (``shop.product:42``). Every key that reaches Redis, a response header or a purge call
goes through :func:`normalize_key`, so the three always agree. Which models are tracked, and the
keys a change to an instance invalidates, is decided in :mod:`django_tiercache.signals`.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.db import models

__all__ = [
    "KeyFactory",
    "concrete_model",
    "default_keys",
    "key_factory",
    "normalize_key",
    "normalize_keys",
    "object_key",
    "object_keys",
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
    concrete = concrete_model(instance)
    return [object_key(concrete, instance.pk)] + [
        object_key(parent, instance.pk) for parent in concrete._meta.get_parent_list()
    ]


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
