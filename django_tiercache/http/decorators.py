"""View decorators of the HTTP tier: ``origin_cache``, ``private_cache`` and ``no_cache``.

``origin_cache`` only records a policy on the response: whether the response may really be
edge-cached depends on what happens after the view (cookies, session, CSRF), so
:class:`~django_tiercache.middleware.TierCacheMiddleware`, placed first in ``MIDDLEWARE``, writes
the headers. ``private_cache`` and ``no_cache`` write their Cache-Control at once and work
without the middleware. Each works on function views, async views, and class-based views through
``method_decorator``. When decorators are stacked, the most restrictive policy wins.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias, TypeVar

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.cache import add_never_cache_headers, patch_cache_control

from django_tiercache import collector
from django_tiercache.http.headers import make_private
from django_tiercache.keys import normalize_key

__all__ = ["CachePolicy", "KeySource", "get_policy", "no_cache", "origin_cache", "private_cache"]

logger = logging.getLogger(__name__)

#: A key, or a callable ``(request, response) -> iterable of keys`` evaluated after the view.
KeySource: TypeAlias = str | Callable[[HttpRequest, HttpResponseBase], Iterable[str]]
_View = TypeVar("_View", bound=Callable[..., Any])

_ATTRIBUTE = "_tiercache_policy"
_RANK = {"origin": 0, "private": 1, "no-store": 2}


@dataclass(frozen=True)
class CachePolicy:
    """What a decorated view asked for; ``None`` values mean "the ``TIERCACHE["HTTP"]`` default".

    ``keys`` are normalised and include those of key callables, evaluated for this response.
    """

    kind: Literal["origin", "private", "no-store"]
    view_name: str
    edge_max_age: int | None = None
    browser_max_age: int | None = None
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    keys: frozenset[str] = frozenset()
    vary_on: tuple[str, ...] = ()


def get_policy(response: HttpResponseBase) -> CachePolicy | None:
    """The policy a decorator recorded on ``response``, or None for an undecorated view."""
    policy: CachePolicy | None = getattr(response, _ATTRIBUTE, None)
    return policy


def _record(response: HttpResponseBase, policy: CachePolicy) -> None:
    current = get_policy(response)
    if current is None or _RANK[policy.kind] > _RANK[current.kind]:
        setattr(response, _ATTRIBUTE, policy)


def _view_name(view: Callable[..., Any]) -> str:
    module = getattr(view, "__module__", None) or "?"
    name = getattr(view, "__qualname__", None) or type(view).__qualname__
    return f"{module}.{name}"


def _non_negative(value: int | None, name: str, view_name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} of {view_name} must be None or an int >= 0, got {value!r}")


def _wrap(view: _View, after: Callable[[HttpRequest, HttpResponseBase], HttpResponseBase]) -> _View:
    """Wrap a sync or async view so ``after(request, response)`` runs on its response."""
    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            return after(request, await view(request, *args, **kwargs))

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return after(request, view(request, *args, **kwargs))

    return wrapper  # type: ignore[return-value]


#: Names of the views decorated with :func:`origin_cache` in this process (for the system check).
_origin_views: list[str] = []


def origin_cache_views() -> list[str]:
    """Names of the views :func:`origin_cache` has decorated so far in this process."""
    return list(_origin_views)


def origin_cache(
    seconds: int | None = None,
    keys: Iterable[KeySource] = (),
    stale_while_revalidate: int | None = None,
    stale_if_error: int | None = None,
    browser_max_age: int | None = None,
    *,
    vary_on: Iterable[str] = (),
) -> Callable[[_View], _View]:
    """Opt a view in to edge caching for ``seconds`` (default ``EDGE_MAX_AGE``).

    ``keys`` holds strings and callables ``(request, response) -> iterable of strings``; they are
    sent with every key the request's cached queries and :func:`~django_tiercache.add_keys`
    collected. ``stale_*`` and ``browser_max_age`` default to the ``TIERCACHE["HTTP"]`` settings.
    ``vary_on`` adds request headers to ``Vary``. The response is only edge-cached when
    :class:`~django_tiercache.middleware.TierCacheMiddleware` finds it anonymous (see its docs).

    A key that is not a string raises :class:`TypeError` naming the view.
    """
    durations = {
        "seconds": seconds,
        "stale_while_revalidate": stale_while_revalidate,
        "stale_if_error": stale_if_error,
        "browser_max_age": browser_max_age,
    }
    vary = tuple(vary_on) if not isinstance(vary_on, str) else (vary_on,)
    sources = keys if isinstance(keys, str) else list(keys)  # refused per view, by name

    def decorator(view: _View) -> _View:
        name = _view_name(view)
        _origin_views.append(name)
        for label, value in durations.items():
            _non_negative(value, label, name)
        static, factories = _key_sources(sources, name)
        policy = CachePolicy(
            kind="origin",
            view_name=name,
            edge_max_age=seconds,
            browser_max_age=browser_max_age,
            stale_while_revalidate=stale_while_revalidate,
            stale_if_error=stale_if_error,
            keys=frozenset(static),
            vary_on=vary,
        )
        return _wrap(view, _OriginRecorder(policy, factories))

    return decorator


KeyCallable: TypeAlias = Callable[[HttpRequest, HttpResponseBase], Iterable[str]]


def _key_sources(keys: Iterable[KeySource], view_name: str) -> tuple[set[str], list[KeyCallable]]:
    """``origin_cache``'s ``keys`` split into normalised fixed keys and key callables."""
    if isinstance(keys, str):
        raise TypeError(f"origin_cache on {view_name}: keys must be a list of keys, not a string")
    static: set[str] = set()
    factories: list[KeyCallable] = []
    for source in keys:
        if isinstance(source, str):
            static.add(_normalize(source, view_name))
        elif callable(source):
            factories.append(source)
        else:
            raise TypeError(
                f"origin_cache on {view_name}: keys must be strings or callables "
                f"(request, response) -> keys, got {type(source).__name__}: {source!r:.100}"
            )
    return static, factories


class _OriginRecorder:
    """Records an ``origin_cache`` view's policy on each of its responses, with the keys its key
    callables give for that response; warns once when no middleware will read it."""

    __slots__ = ("factories", "policy", "warned")

    def __init__(self, policy: CachePolicy, factories: list[KeyCallable]) -> None:
        self.policy = policy
        self.factories = factories
        self.warned = False

    def __call__(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        policy = self.policy
        if collector.current() is None and not self.warned:
            self.warned = True
            logger.warning(
                "origin_cache on %s has no effect: TierCacheMiddleware is not in MIDDLEWARE.",
                policy.view_name,
            )
        if self.factories:
            found = _call_factories(self.factories, request, response, policy.view_name)
            policy = replace(policy, keys=policy.keys | found)
        _record(response, policy)
        return response


def _normalize(key: Any, view_name: str) -> str:
    if not isinstance(key, str):
        raise TypeError(
            f"origin_cache on {view_name}: surrogate keys must be str, "
            f"got {type(key).__name__}: {key!r:.100}"
        )
    try:
        return normalize_key(key)
    except ValueError as exc:
        raise ValueError(f"origin_cache on {view_name}: {exc}") from exc


def _call_factories(
    factories: list[KeyCallable],
    request: HttpRequest,
    response: HttpResponseBase,
    view_name: str,
) -> set[str]:
    found: set[str] = set()
    for factory in factories:
        produced = factory(request, response)
        if isinstance(produced, str):
            raise TypeError(
                f"origin_cache on {view_name}: key callable {_view_name(factory)} returned the "
                f"string {produced!r:.100}; return an iterable of keys"
            )
        found.update(_normalize(key, view_name) for key in produced)
    return found


def private_cache(max_age: int = 0) -> Callable[[_View], _View]:
    """``Cache-Control: private, max-age=<max_age>``: the browser may keep it, no shared cache."""

    def decorator(view: _View) -> _View:
        name = _view_name(view)
        _non_negative(max_age, "max_age", name)
        policy = CachePolicy(kind="private", view_name=name, browser_max_age=max_age)

        def after(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
            make_private(response)
            patch_cache_control(response, max_age=max_age)
            _record(response, policy)
            return response

        return _wrap(view, after)

    return decorator


def no_cache(view: _View) -> _View:
    """No cache may store the response (Django's never-cache headers, including ``no-store``)."""
    policy = CachePolicy(kind="no-store", view_name=_view_name(view))

    def after(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        add_never_cache_headers(response)
        make_private(response, no_store=True)
        _record(response, policy)
        return response

    return _wrap(view, after)
