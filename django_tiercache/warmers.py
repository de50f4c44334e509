"""Query-tier warmers: functions that fill the query tier, run by ``tiercache_warm --queries``.

A warmer takes no argument and evaluates cached querysets (or calls
``query_results.get_or_set``), so that the first visitors after a deploy or a purge find them
cached::

    import django_tiercache

    @django_tiercache.warmer
    def home_page_products():
        list(Product.objects.filter(featured=True).cached())

Warmers are registered with the decorator in a ``warmers`` module of any installed app (imported
by the command) or listed as dotted paths in ``TIERCACHE["WARMERS"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import autodiscover_modules, import_string

from django_tiercache.conf import tiercache_settings

__all__ = ["WarmerError", "get_warmers", "warmer"]

Warmer = Callable[[], Any]
W = TypeVar("W", bound=Warmer)

_registry: dict[str, Warmer] = {}


class WarmerError(ImproperlyConfigured):
    """A dotted path in ``TIERCACHE["WARMERS"]`` does not name a callable."""


def warmer_name(func: Warmer) -> str:
    """``module.qualname``: the name a warmer is reported under."""
    return f"{func.__module__}.{getattr(func, '__qualname__', repr(func))}"


def warmer(func: W) -> W:
    """Decorator: register ``func`` (no arguments) as a query-tier warmer; returns it unchanged."""
    if not callable(func):
        raise TypeError(f"@warmer expects a function, got {func!r:.100}")
    _registry[warmer_name(func)] = func
    return func


def get_warmers() -> dict[str, Warmer]:
    """Every warmer by name: ``TIERCACHE["WARMERS"]`` first, then the registered ones.

    Imports the ``warmers`` module of each installed app first, so their decorators run.
    """
    autodiscover_modules("warmers")
    found: dict[str, Warmer] = {}
    for path in tiercache_settings.WARMERS:
        try:
            func = import_string(path)
        except ImportError as exc:
            raise WarmerError(f"TIERCACHE['WARMERS']: cannot import {path!r}: {exc}") from exc
        if not callable(func):
            raise WarmerError(f"TIERCACHE['WARMERS']: {path!r} is not callable")
        found[path] = func
    for name, func in _registry.items():
        found.setdefault(name, func)
    return found
