"""django-tiercache: one vocabulary of surrogate keys for the query, HTTP and edge cache tiers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "add_keys",
    "invalidate",
    "key_factory",
    "normalize_key",
    "purge_completed",
    "purge_failed",
    "register",
    "warmer",
]

if TYPE_CHECKING:
    from django_tiercache.collector import add_keys
    from django_tiercache.edge.events import purge_completed, purge_failed
    from django_tiercache.invalidation import invalidate
    from django_tiercache.keys import key_factory, normalize_key
    from django_tiercache.signals import register
    from django_tiercache.warmers import warmer

# Public names, imported on first use: importing the package must not import models before
# Django's app registry is ready.
_LAZY = {
    "add_keys": "django_tiercache.collector",
    "invalidate": "django_tiercache.invalidation",
    "key_factory": "django_tiercache.keys",
    "normalize_key": "django_tiercache.keys",
    "register": "django_tiercache.signals",
    "purge_completed": "django_tiercache.edge.events",
    "purge_failed": "django_tiercache.edge.events",
    "warmer": "django_tiercache.warmers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'django_tiercache' has no attribute {name!r}")
