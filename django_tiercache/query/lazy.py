"""Lazy querysets: record simple chained calls instead of building the ``Query``.

Building a ``Query`` (``filter()`` resolves lookups, joins and values) costs more than a cache hit.
A cached queryset whose query is still as its manager made it records ``filter``/``exclude``
with plain keyword values, ``order_by`` with field names and slices as *operations*; their digest
names the cache entry. The ``Query`` is built only when something needs it (a miss, or any other
queryset method), by replaying the operations exactly as Django's own methods apply them.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import uuid
from collections.abc import Iterable
from typing import Any

from django.db import models
from django.db.models.sql.query import Query

from django_tiercache.query.planner import fingerprint, memoised_names

#: Types of values recorded as they are: equal values of one of them have the same repr().
EXACT = frozenset({str, int, type(None)})
#: Types of values recorded as ``(type name, repr())``: equal values can differ (``True == 1``,
#: ``Decimal("1.0") == Decimal("1")``, aware datetimes in two time zones), their reprs cannot.
SCALARS = (
    float,
    bool,
    decimal.Decimal,
    datetime.date,
    datetime.datetime,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
)

Operation = tuple[Any, ...]

_pristine: dict[tuple[type, type[models.Model]], dict[str, Any]] = {}


def _state(query: Query) -> dict[str, Any]:
    skip = memoised_names(type(query))
    return {key: value for key, value in vars(query).items() if key not in skip}


def base_identity(query: Query) -> str:
    """``pristine`` for a query as ``Manager.get_queryset()`` makes it, else its fingerprint.

    ``pristine`` says nothing of the model: the entry name must add it (see :func:`lazy_name`).
    """
    model = query.model
    assert model is not None
    template = _pristine.get((type(query), model))
    if template is None:
        template = _pristine[(type(query), model)] = _state(type(query)(model).chain())
    if _state(query) == template:
        return "pristine"
    return fingerprint(query)


def recordable(value: Any) -> Any:
    """``value`` in a deterministic, hashable form, or raise ``TypeError`` when it is not simple.

    Two recorded values are equal only if their repr() is, so recorded operations can key a dict
    of entry names.
    """
    if type(value) in EXACT:
        return value
    if isinstance(value, SCALARS):
        return (type(value).__name__, repr(value))
    if isinstance(value, list | tuple):
        return tuple(recordable(item) for item in value)
    if isinstance(value, models.Model) and value.pk is not None:
        return ("<model>", value._meta.label, recordable(value.pk))
    raise TypeError(f"not recordable: {type(value).__name__}")


def record_lookups(kwargs: dict[str, Any]) -> tuple[tuple[str, Any], ...] | None:
    """The keyword lookups in recorded form, or None when one of them is not simple."""
    try:
        return tuple(sorted([(name, recordable(value)) for name, value in kwargs.items()]))
    except TypeError:
        return None


def identity(
    base: str, model: str, operations: Iterable[Operation], *shape: Any
) -> tuple[Any, ...]:
    """What names a lazy queryset's entry: its base query, model, operations and result shape.

    A ``filter`` operation is ``("filter", negated, recorded lookups, original kwargs)``; only
    its first three items name it. Equal identities have equal reprs (see :func:`recordable`).
    """
    recorded = tuple([op[:3] if op[0] == "filter" else op for op in operations])
    return (base, model, recorded, shape)


def shaped(identity: tuple[Any, ...], *shape: Any) -> tuple[Any, ...]:
    """``identity`` with the result shape ``shape`` instead of its own: ``identity(base, model,
    operations, *shape)`` without recording the operations again."""
    return (*identity[:3], shape)


def lazy_name(identity: tuple[Any, ...]) -> str:
    """The entry name of an :func:`identity`."""
    return "l" + hashlib.blake2b(repr(identity).encode(), digest_size=16).hexdigest()
