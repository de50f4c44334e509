"""Edge purgers, built from ``TIERCACHE["PURGERS"]`` (like ``CACHES``: a ``BACKEND`` each)."""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string

from django_tiercache.conf import tiercache_settings
from django_tiercache.edge.purgers.base import BasePurger, PurgerConfigError, PurgeResult

__all__ = ["BasePurger", "PurgeResult", "PurgerConfigError", "build_purger", "get_purgers"]

_purgers: dict[str, BasePurger] | None = None


def build_purger(name: str, config: Any) -> BasePurger:
    """Instantiate one purger from its settings entry; :class:`PurgerConfigError` when wrong."""
    if not isinstance(config, dict):
        raise PurgerConfigError(
            f"Purger {name!r} must be a dict with a BACKEND, got {config!r:.80}"
        )
    options = dict(config)
    backend = options.pop("BACKEND", None)
    if not isinstance(backend, str) or not backend:
        raise PurgerConfigError(f"Purger {name!r} has no BACKEND dotted path")
    try:
        cls = import_string(backend)
    except ImportError as exc:
        raise PurgerConfigError(
            f"Purger {name!r}: cannot import BACKEND {backend!r}: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, BasePurger)):
        raise PurgerConfigError(f"Purger {name!r}: {backend!r} is not a BasePurger subclass")
    return cls(name, options)


def get_purgers() -> dict[str, BasePurger]:
    """The configured purgers by name, built once per settings value."""
    global _purgers
    if _purgers is None:
        _purgers = {
            name: build_purger(name, config) for name, config in tiercache_settings.PURGERS.items()
        }
    return _purgers


@tiercache_settings.on_reload
def _forget_purgers() -> None:
    global _purgers
    _purgers = None
