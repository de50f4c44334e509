"""Which models are tracked, the keys a change to one invalidates, and the receivers that send
those keys to :mod:`django_tiercache.invalidation`.

A model is tracked when it uses :class:`~django_tiercache.models.SurrogateKeyMixin` or was passed
to :func:`register`. Receivers are connected per tracked model (``AppConfig.ready`` and
:func:`register`), never for every model: a model with no ``post_delete`` receiver keeps Django's
fast deletes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from django.apps import apps
from django.db import models
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete

from django_tiercache.invalidation import collect
from django_tiercache.keys import (
    KeyFactory,
    concrete_model,
    default_keys,
    normalize_keys,
    scope_key,
    scope_keys,
    scope_value,
    scoped_fields,
    table_key,
    table_keys,
)
from django_tiercache.models import SurrogateKeyMixin

__all__ = [
    "connect",
    "has_custom_keys",
    "instance_keys",
    "is_tracked",
    "read_scope_keys",
    "register",
    "track",
]

_UID = "django_tiercache"
# ``Model._base_manager`` below is public API despite its underscore, like ``Model._meta``:
# Django's docs name it as the manager for related-object access, unfiltered by custom managers.

_registry: dict[type[models.Model], list[KeyFactory | str]] = {}


def register(model: type[models.Model], purge_keys: Iterable[KeyFactory | str] = ()) -> None:
    """Track ``model``: its changes invalidate its keys plus ``purge_keys``.

    ``purge_keys`` holds fixed keys and factories (``key_factory(...)`` or any callable taking the
    instance and returning keys). Registering a model twice adds to its purge keys.
    """
    if not (isinstance(model, type) and issubclass(model, models.Model)):
        raise TypeError(f"register() expects a model class, got {model!r}")
    factories = list(purge_keys)
    for factory in factories:
        if not (isinstance(factory, str) or callable(factory)):
            raise TypeError(
                f"purge_keys for {model._meta.label} must be strings or callables, "
                f"got {factory!r:.100}"
            )
    _registry.setdefault(model, []).extend(factories)
    if apps.models_ready:  # e.g. register() in the ready() of an app listed after ours
        track(model)


def is_tracked(model: type[models.Model]) -> bool:
    """Whether changes to ``model`` invalidate keys: mixin models, registered models, their
    proxies and multi-table children."""
    return issubclass(model, SurrogateKeyMixin) or any(m in _registry for m in _lineage(model))


def _lineage(model: type[models.Model]) -> list[type[models.Model]]:
    """``model``, its concrete model (for a proxy) and its multi-table parents."""
    concrete = concrete_model(model)
    return list(dict.fromkeys((model, concrete, *concrete._meta.get_parent_list())))


def _factories(model: type[models.Model]) -> list[KeyFactory | str]:
    return [factory for m in _lineage(model) for factory in _registry.get(m, ())]


def has_custom_keys(model: type[models.Model]) -> bool:
    """Whether a change to ``model`` invalidates more than its object and table keys (an
    overridden ``surrogate_keys()`` or registered ``purge_keys``): those need the instances."""
    overridden = issubclass(model, SurrogateKeyMixin) and (
        model.surrogate_keys is not SurrogateKeyMixin.surrogate_keys
    )
    return overridden or bool(_factories(model))


def instance_keys(instance: models.Model) -> set[str]:
    """Every normalised key a change to ``instance`` invalidates.

    Its object and table keys are always included, whatever ``surrogate_keys()`` returns: the
    query tier tags results with them, so leaving one out would serve stale rows.
    """
    keys = set(default_keys(instance))
    if isinstance(instance, SurrogateKeyMixin):
        keys.update(instance.surrogate_keys())
    for factory in _factories(type(instance)):
        if isinstance(factory, str):
            keys.add(factory)
        else:
            keys.update(factory(instance))
    return normalize_keys(keys)


def connect() -> None:
    """Connect the receivers of every tracked model (mixin subclasses and registered models)."""
    for model in apps.get_models():
        if is_tracked(model):
            track(model)


def track(model: type[models.Model]) -> None:
    """Connect the receivers for ``model`` and the through models of its many-to-many fields."""
    label = model._meta.label_lower
    post_save.connect(_on_save, sender=model, dispatch_uid=f"{_UID}.save.{label}")
    post_delete.connect(_on_delete, sender=model, dispatch_uid=f"{_UID}.delete.{label}")
    for through in _through_models(model):
        m2m_changed.connect(
            _on_m2m_changed, sender=through, dispatch_uid=f"{_UID}.m2m.{through._meta.label_lower}"
        )
    for field in model._meta.concrete_fields:
        if _updated_on_delete(field):
            referenced = field.related_model
            assert isinstance(referenced, type)
            pre_delete.connect(
                _RowsUpdatedOnDelete(model, field.name),
                sender=referenced,
                weak=False,
                dispatch_uid=f"{_UID}.on_delete.{label}.{field.name}",
            )


def _updated_on_delete(field: Any) -> bool:
    """A foreign key whose rows Django updates, without signals, when its target is deleted."""
    on_delete = getattr(getattr(field, "remote_field", None), "on_delete", None)
    return on_delete in (models.SET_NULL, models.SET_DEFAULT) or (
        getattr(on_delete, "__name__", "") == "set_on_delete"  # models.SET(...)
    )


class _RowsUpdatedOnDelete:
    """Invalidates the rows of ``model`` that a deletion will point elsewhere (SET_NULL etc.)."""

    def __init__(self, model: type[models.Model], field_name: str) -> None:
        self.model, self.field_name = model, field_name

    def __call__(self, sender: Any, instance: models.Model, using: str, **_: Any) -> None:
        field: Any = self.model._meta.get_field(self.field_name)
        rows = self.model._base_manager.using(using).filter(**{self.field_name: instance})
        on_delete = field.remote_field.on_delete
        keys: set[str] = set()
        for row in rows.iterator():
            keys |= instance_keys(row)
            if on_delete in (models.SET_NULL, models.SET_DEFAULT):  # SET(...): not scoped
                after = None if on_delete is models.SET_NULL else field.get_default()
                setattr(row, field.attname, after)  # as the deletion leaves the row
            keys |= scope_keys(row)[0]
        if keys:
            collect(keys | set(table_keys(self.model)), using)


def _through_models(model: type[models.Model]) -> Iterator[type[models.Model]]:
    for field in model._meta.get_fields(include_hidden=True):
        if field.many_to_many and field.remote_field is not None:
            through = getattr(field, "through", None) or field.remote_field.through  # type: ignore[union-attr]
            if isinstance(through, type):
                yield through


def _on_save(
    sender: type[models.Model],
    instance: models.Model,
    using: str,
    update_fields: frozenset[str] | None = None,
    **_: Any,
) -> None:
    """A saved row: its keys, and the scope keys of every scoped field as the row is now.

    Every scoped field, not only the written ones: a list filtered on ``category`` and on
    ``price`` is tagged with the ``category`` scope alone, and a new price can bring the row in.
    Values the instance does not hold for sure (deferred, left out of ``update_fields``, an
    expression) are read back from the database: one query, only then.
    """
    fields = scoped_fields(type(instance))
    stale: list[Any] = []
    if update_fields is not None:
        written = set(update_fields)
        stale = [f for f in fields if not {f.name, f.attname} & written]
        fields = [f for f in fields if f not in stale]
    keys, unknown = scope_keys(instance, fields)
    keys |= read_scope_keys(type(instance), [instance.pk], [*unknown, *stale], using)
    collect(instance_keys(instance) | keys, using)


def read_scope_keys(
    model: type[models.Model], pks: list[Any], fields: list[Any], using: str
) -> set[str]:
    """Scope keys of ``fields`` as the rows ``pks`` hold them in the database (one query)."""
    if not fields or not pks:
        return set()
    rows = model._base_manager.using(using).filter(pk__in=pks)
    keys: set[str] = set()
    for values in rows.values_list(*[f.attname for f in fields]):
        for field, value in zip(fields, values, strict=True):
            text = scope_value(field, value)
            if text is not None:  # a value read from a scoped column can always be written
                keys.add(scope_key(field, text))
    return keys


def _on_delete(sender: type[models.Model], instance: models.Model, using: str, **_: Any) -> None:
    """A deleted row, and the rows of automatic many-to-many through tables Django deleted with
    it without any signal."""
    keys = instance_keys(instance) | scope_keys(instance)[0]
    keys.update(table_key(t) for t in _through_models(sender) if t._meta.auto_created)
    collect(keys, using)


def _m2m_field(
    sender: type[models.Model], owner: type[models.Model]
) -> models.ManyToManyField[Any, Any]:
    for field in owner._meta.many_to_many:
        if field.remote_field.through is sender:
            return field
    raise LookupError(f"No many-to-many field of {owner._meta.label} uses {sender._meta.label}")


def _ends(
    sender: type[models.Model], instance: models.Model, reverse: bool, model: type[models.Model]
) -> tuple[str, str]:
    """The through model's foreign keys to ``instance``'s side and to ``model``'s side."""
    field = _m2m_field(sender, model if reverse else type(instance))
    source, target = field.m2m_field_name(), field.m2m_reverse_field_name()
    return (target, source) if reverse else (source, target)


def _on_m2m_changed(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    reverse: bool,
    model: type[models.Model],
    pk_set: set[Any] | None,
    using: str,
    **_: Any,
) -> None:
    if action not in ("post_add", "post_remove", "pre_clear"):
        return
    own, other = is_tracked(type(instance)), is_tracked(model)
    if not (own or other):
        return
    keys = {table_key(sender)}
    if own:
        keys |= instance_keys(instance)
    if other:
        source, target = _ends(sender, instance, reverse, model)
        # pk_set holds the values the through rows store: the primary keys of ``model``, or
        # the field its foreign key names with to_field.
        values: Iterable[Any] = pk_set or ()
        if action == "pre_clear":
            rows = sender._base_manager.using(using).filter(**{source: instance})
            values = rows.values_list(target, flat=True)
        referenced = sender._meta.get_field(target).target_field.name  # type: ignore[union-attr]
        related = model._base_manager.using(using).filter(**{f"{referenced}__in": list(values)})
        for row in related:
            keys |= instance_keys(row)
    collect(keys, using)
