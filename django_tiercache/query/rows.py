"""Lists of model instances pickled as one table.

Django pickles every instance on its own (``Model.__reduce__``): unpickling looks its model up
in the app registry, builds its state and calls ``__setstate__``, once per row; for a list of
rows that is most of a hit. :func:`pack` wraps a list of instances of one model, each with
nothing but its field values (and annotations) and a plain state, so that it pickles as the
model, the database and a table of values, and unpickles in one loop into the instances
Django's own unpickling gives: same class, same attributes in the same order, a ``_state``
with ``db`` and ``adding=False``. Anything else (related instances cached on a row, prefetched
rows, a ``memoryview`` value, a model with its own pickling) is left to Django's pickling.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db.models import Model
from django.db.models.base import ModelState

#: ``ModelState`` attributes kept as they are (the same on every row of a packed list).
_KEPT = ("db", "adding", "fetch_mode")
#: Attributes left out, as Django's pickling leaves them out or empty: ``fields_cache`` (when
#: empty) and Django 6.1's ``peers`` (weak references, linked again after a hit).
_DROPPED = frozenset({"fields_cache", "peers"})
_STATE_SLOT = "_state"
_PICKLING = ("__reduce__", "__reduce_ex__", "__getstate__", "__setstate__")


class Rows:
    """A list of model instances that pickles as a table (see :func:`pack`)."""

    __slots__ = ("rows", "state")

    def __init__(self, rows: list[Model], state: dict[str, Any]) -> None:
        self.rows, self.state = rows, state

    def __reduce__(self) -> tuple[Any, ...]:
        first = self.rows[0]
        names = tuple(first.__dict__)
        table = [
            tuple([None if name == _STATE_SLOT else value for name, value in row.__dict__.items()])
            for row in self.rows
        ]
        return _unpack, (first._meta.label, self.state, names, table)


def pack(value: Any) -> Any:
    """``value`` as :class:`Rows` when it is a list that pickles correctly as a table, else as
    it is."""
    if type(value) is not list or not value:
        return value
    model = type(value[0])
    if not _plain_pickling(model):
        return value
    names = value[0].__dict__.keys()
    state = _shared_state(value[0])
    if state is None or state.get("adding") is not False:
        return value
    for row in value:
        if type(row) is not model or row.__dict__.keys() != names or _shared_state(row) != state:
            return value
        if any(isinstance(v, memoryview) for v in row.__dict__.values()):
            return value
    return Rows(value, state)


def _plain_pickling(model: type) -> bool:
    """Whether ``model`` pickles as Django pickles models and is the registry's own class."""
    return (
        issubclass(model, Model)
        and all(getattr(model, hook) is getattr(Model, hook) for hook in _PICKLING)
        and _registered(model)
    )


def _registered(model: type[Model]) -> bool:
    try:
        return apps.get_model(model._meta.label) is model
    except LookupError:
        return False


def _shared_state(row: Model) -> dict[str, Any] | None:
    """What of the row's ``_state`` a packed list keeps; None when it holds more."""
    state = row._state.__dict__
    if state.get("fields_cache") or not state.keys() <= {*_KEPT, *_DROPPED}:
        return None
    return {name: state[name] for name in _KEPT if name in state}


def _unpack(
    label: str, state: dict[str, Any], names: tuple[str, ...], table: list[tuple[Any, ...]]
) -> list[Model]:
    """The instances :meth:`Rows.__reduce__` pickled (``model_unpickle``, once per list)."""
    model = apps.get_model(label)
    new: Any = model.__new__
    new_state: Any = ModelState.__new__
    rows = []
    for values in table:
        row = new(model)
        row_state = new_state(ModelState)
        row_state.__dict__ = state.copy()
        attributes = dict(zip(names, values, strict=True))
        attributes[_STATE_SLOT] = row_state
        row.__dict__ = attributes
        rows.append(row)
    return rows
