"""The request scope: keys (and query-tier counts) gathered while one response is computed.

The middleware opens a scope per request; cached querysets and :func:`add_keys` add to it; the
middleware writes the keys to ``Surrogate-Key`` / ``Cache-Tag``. A ``ContextVar`` holds a mutable
scope, so keys added in ``sync_to_async`` threads or in async views land in the same scope.
Outside a scope (a shell, a Celery task) adding keys does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from django_tiercache.keys import normalize_key


@dataclass(slots=True)  # one per request: slots make it cheaper to create and update
class RequestScope:
    keys: set[str] = field(default_factory=set)
    hits: int = 0
    misses: int = 0
    #: Why the response read data no key can purge (it must not be edge-cached), or "".
    unpurgeable: str = ""


_scope: ContextVar[RequestScope | None] = ContextVar("tiercache_request_scope", default=None)


def begin() -> Token[RequestScope | None]:
    """Open a new scope; pass the token to :func:`end`."""
    return _scope.set(RequestScope())


def end(token: Token[RequestScope | None]) -> None:
    _scope.reset(token)


#: ``current()``: the open scope, or None outside a request. The ContextVar's own ``get``, so
#: the per-request callers (middleware, decorators, cached querysets) pay no Python call.
current: Callable[[], RequestScope | None] = _scope.get


def add_normalized(keys: Iterable[str]) -> None:
    """Add keys that already went through :func:`normalize_key` (the query tier's hot path)."""
    scope = _scope.get()
    if scope is not None:
        scope.keys.update(keys)


def add_keys(*keys: str) -> None:
    """Add surrogate keys to the response being computed (a no-op outside a request).

    Each key is normalised; a non-string raises :class:`TypeError`, an empty one
    :class:`ValueError`.
    """
    normalized = [normalize_key(key) for key in keys]
    add_normalized(normalized)
