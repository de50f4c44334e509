"""``TierCacheMiddleware``: writes the HTTP tier's headers once every other middleware is done.

Put it first in ``MIDDLEWARE`` (outermost), like Django's ``UpdateCacheMiddleware``, so it sees the
cookies and ``Vary`` that sessions, CSRF and auth add. Per request it opens a collector scope (the
keys of cached queries and :func:`~django_tiercache.add_keys` land there) and then applies:

- ``origin_cache`` view, GET/HEAD, status in ``CACHEABLE_STATUSES``, not user-specific (no cookie
  set, no ``Authorization``, session not accessed, no authenticated user loaded), Cache-Control
  not already ``private``/``no-store``, keys fit ``MAX_KEY_HEADER_BYTES`` (object keys collapse to
  table keys first): ``Cache-Control: public, max-age=<browser>, s-maxage=<edge>``,
  ``Surrogate-Control`` and the ``KEY_HEADERS``. Otherwise ``Cache-Control: private``, no edge
  headers; a cookie set by an ``origin_cache`` view, or keys that do not fit, are logged.
- ``private_cache`` / ``no_cache`` view: ``private`` / ``no-store``, never edge headers.
- Undecorated view: headers left alone, unless the response is user-specific: then it is made
  ``private`` (a ``public`` header set elsewhere is dropped and logged) and edge headers removed.

``origin_cache`` and ``private_cache`` views get ``Accept-Encoding`` (and ``vary_on``) in
``Vary``; any response whose session was accessed or that sets the CSRF cookie gets ``Cookie``.
Their GET responses get Django's ETag (``set_response_etag``; streaming responses excepted; not
with ``ETAG`` off) and a 304 through :func:`django.utils.cache.get_conditional_response`.
``SERVER_TIMING`` adds query-tier hits and misses in a ``Server-Timing`` header.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.cache import get_conditional_response, patch_cache_control, set_response_etag
from django.utils.http import parse_http_date_safe

from django_tiercache import collector
from django_tiercache.conf import tiercache_settings
from django_tiercache.http.decorators import CachePolicy, get_policy
from django_tiercache.http.headers import (
    EDGE_HEADERS,
    SETS_COOKIE,
    SHARED_DIRECTIVES,
    EdgeValues,
    add_vary,
    cache_control_directives,
    edge_values,
    fit_keys,
    header_names,
    key_header_bytes,
    make_private,
    resolve_key_headers,
    session_accessed,
    user_specific_reason,
    write_key_headers,
)

__all__ = ["TierCacheMiddleware"]

logger = logging.getLogger(__name__)

_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
_OPTED_OUT = frozenset({"private", "no-store"})
_ACCEPT_ENCODING = ("Accept-Encoding",)
_CONDITIONAL_HEADERS = frozenset(
    {"HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_MATCH", "HTTP_IF_UNMODIFIED_SINCE"}
)


class _Options:
    """``TIERCACHE["HTTP"]`` as the middleware reads it per request, memoised until it changes.

    Reading ``tiercache_settings.HTTP`` costs a failed attribute lookup per request and
    ``settings.DEBUG`` a Python-level ``__getattribute__``; the Cache-Control / Surrogate-Control
    values of a policy are the same on every request. Changing ``TIERCACHE`` or ``DEBUG`` drops
    the memo.
    """

    __slots__ = (
        "_edge",
        "cacheable_statuses",
        "etag",
        "http",
        "key_headers",
        "max_key_header_bytes",
        "server_timing",
    )

    def __init__(self, http: dict[str, Any]) -> None:
        self.http = http
        self.cacheable_statuses = http["CACHEABLE_STATUSES"]
        self.max_key_header_bytes: int = http["MAX_KEY_HEADER_BYTES"]
        timing = http["SERVER_TIMING"]
        self.server_timing = bool(timing or (timing is None and settings.DEBUG))
        self.etag = bool(http["ETAG"])
        self.key_headers: tuple[tuple[str, str], ...] | None
        try:
            self.key_headers = resolve_key_headers(http["KEY_HEADERS"])
        except (KeyError, AttributeError, TypeError):  # a system-check error; raise per request
            self.key_headers = None
        self._edge: dict[tuple[int | None, ...], EdgeValues] = {}

    def edge_values(self, policy: CachePolicy) -> EdgeValues:
        """Cache-Control and Surrogate-Control of ``policy``, its None values from the settings."""
        durations = (
            policy.browser_max_age,
            policy.edge_max_age,
            policy.stale_while_revalidate,
            policy.stale_if_error,
        )
        values = self._edge.get(durations)
        if values is None:
            if len(self._edge) >= 256:  # policies built per request: keep the memo bounded
                self._edge.clear()
            http = self.http
            browser, edge, swr, sie = durations
            values = self._edge[durations] = edge_values(
                browser_max_age=http["BROWSER_MAX_AGE"] if browser is None else browser,
                edge_max_age=http["EDGE_MAX_AGE"] if edge is None else edge,
                stale_while_revalidate=http["STALE_WHILE_REVALIDATE"] if swr is None else swr,
                stale_if_error=http["STALE_IF_ERROR"] if sie is None else sie,
            )
        return values


_options: _Options | None = None


def _get_options() -> _Options:
    global _options
    options = _options
    if options is None:
        options = _options = _Options(tiercache_settings.HTTP)
    return options


@tiercache_settings.on_reload
def _forget_options() -> None:
    global _options
    _options = None


class TierCacheMiddleware:
    """Cache-Control, Vary, Surrogate-Control, Surrogate-Key/Cache-Tag/xkey and ETag per request."""

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.async_mode:
            return self.__acall__(request)
        token = collector.begin()
        try:
            # Sync mode: get_response returns the response (no typing.cast call per request).
            response: HttpResponseBase = self.get_response(request)  # type: ignore[assignment]
            return self.process_response(request, response)
        finally:
            collector.end(token)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        token = collector.begin()
        try:
            response = await cast(Awaitable[HttpResponseBase], self.get_response(request))
            return self.process_response(request, response)
        finally:
            collector.end(token)

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        """Apply the policy; must run inside the request's collector scope."""
        options = _options or _get_options()
        policy = get_policy(response)
        # The headers the response came with: each check below is a set lookup (see header_names).
        names = header_names(response)
        user_reason = user_specific_reason(request, response, names)
        if policy is None:
            if user_reason is not None:
                self._undecorated(request, response, user_reason)
                self._vary(request, response, (), cacheable=False)
        else:
            kind = policy.kind
            if kind == "origin":
                self._origin(request, response, policy, user_reason, options, names)
            else:
                make_private(response, no_store=kind == "no-store")
            # Only a user-specific response can have accessed the session or set the CSRF cookie.
            if user_reason is not None or policy.vary_on:
                self._vary(request, response, policy.vary_on, cacheable=kind != "no-store")
            elif kind != "no-store":
                if "vary" in names:
                    add_vary(response, _ACCEPT_ENCODING)
                else:  # what patch_vary_headers writes on a response without Vary
                    response.headers["Vary"] = "Accept-Encoding"
            if kind != "no-store":
                response = self._conditional(request, response, "etag" in names, options.etag)
        if options.server_timing:
            self._server_timing(response)
        return response

    def _origin(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        policy: CachePolicy,
        user_reason: str | None,
        options: _Options,
        names: AbstractSet[str],
    ) -> None:
        """Edge-cache the response of an ``origin_cache`` view, or make it private (logged).
        ``names``: the response's :func:`header_names` before this middleware wrote any."""
        why_not = self._refusal(request, response, user_reason, options, names)
        ordered = None if why_not else self._fitting_keys(request, policy, options)
        if ordered is None:
            why_not = why_not or "its keys do not fit MAX_KEY_HEADER_BYTES"
            self._refuse(request, response, policy, why_not, user_reason)
            return
        values = options.edge_values(policy)
        self._write_edge_headers(response, values, ordered, options, "cache-control" in names)

    @staticmethod
    def _refusal(
        request: HttpRequest,
        response: HttpResponseBase,
        user_reason: str | None,
        options: _Options,
        names: AbstractSet[str],
    ) -> str | None:
        """Why the response may not be edge-cached, before its keys are looked at; None if not."""
        if request.method not in _CACHEABLE_METHODS:
            return f"method {request.method}"
        if response.status_code not in options.cacheable_statuses:
            return f"status {response.status_code}"
        if user_reason is not None:
            return user_reason
        if "cache-control" in names and cache_control_directives(response) & _OPTED_OUT:
            return "the view made it private or no-store"
        scope = collector.current()
        if scope is not None and scope.unpurgeable:  # it read data that no key can purge
            return scope.unpurgeable
        return None

    def _fitting_keys(
        self, request: HttpRequest, policy: CachePolicy, options: _Options
    ) -> list[str] | None:
        """The response's keys (the request's and the view's), sorted and fitting
        ``MAX_KEY_HEADER_BYTES``; None (logged) when even table keys do not fit."""
        scope = collector.current()
        if scope is None:
            keys: AbstractSet[str] = policy.keys
        else:  # the scope ends with this response: its set can take the view's keys
            keys = scope.keys
            keys.update(policy.keys)
        if key_header_bytes(keys) <= options.max_key_header_bytes:
            return sorted(keys)
        return self._fit_keys(request, policy, keys, options)

    @staticmethod
    def _refuse(
        request: HttpRequest,
        response: HttpResponseBase,
        policy: CachePolicy,
        why_not: str,
        user_reason: str | None,
    ) -> None:
        """Make an ``origin_cache`` response private; a cookie set by the view is a warning."""
        if user_reason == SETS_COOKIE:
            logger.warning(
                "origin_cache on %s downgraded to private for %s: %s.",
                policy.view_name,
                request.path,
                user_reason,
            )
        else:
            logger.debug("origin_cache on %s not edge-cached: %s.", policy.view_name, why_not)
        make_private(response)

    @staticmethod
    def _write_edge_headers(
        response: HttpResponseBase,
        values: EdgeValues,
        ordered: list[str],
        options: _Options,
        has_cache_control: bool,
    ) -> None:
        """Cache-Control (merged with the view's, if ``has_cache_control``), Surrogate-Control
        and the key headers."""
        key_headers = options.key_headers
        if key_headers is None and ordered:
            key_headers = resolve_key_headers(options.http["KEY_HEADERS"])  # raises
        if has_cache_control:
            patch_cache_control(
                response, public=True, max_age=values.browser_max_age, s_maxage=values.edge_max_age
            )
        else:
            response.headers["Cache-Control"] = values.cache_control
        response.headers["Surrogate-Control"] = values.surrogate_control
        if ordered and key_headers:
            write_key_headers(response, ordered, " ".join(ordered), key_headers)

    @staticmethod
    def _fit_keys(
        request: HttpRequest, policy: CachePolicy, keys: AbstractSet[str], options: _Options
    ) -> list[str] | None:
        """``keys`` collapsed to fit ``MAX_KEY_HEADER_BYTES``, sorted; None (logged) if not."""
        fitting = fit_keys(set(keys), options.max_key_header_bytes)
        if fitting is None:
            logger.warning(
                "Not edge-caching %s (%s): %d keys need %d bytes even collapsed to table "
                "keys, over MAX_KEY_HEADER_BYTES=%d.",
                request.path,
                policy.view_name,
                len(keys),
                key_header_bytes(keys),
                options.max_key_header_bytes,
            )
            return None
        return sorted(fitting)

    @staticmethod
    def _undecorated(request: HttpRequest, response: HttpResponseBase, user_reason: str) -> None:
        """Keep a user-specific response of an undecorated view out of shared caches."""
        directives = cache_control_directives(response)
        if directives & SHARED_DIRECTIVES:
            logger.warning(
                "Response for %s was public but %s: made private.", request.path, user_reason
            )
        elif directives & _OPTED_OUT and not any(h in response.headers for h in EDGE_HEADERS):
            return
        make_private(response)

    @staticmethod
    def _vary(
        request: HttpRequest, response: HttpResponseBase, vary_on: tuple[str, ...], cacheable: bool
    ) -> None:
        """Merge Vary: ``Accept-Encoding`` if ``cacheable``, ``Cookie`` if the session was accessed
        or the CSRF cookie set, then ``vary_on``."""
        vary = ["Accept-Encoding"] if cacheable else []
        if session_accessed(request) or (
            response.cookies and settings.CSRF_COOKIE_NAME in response.cookies
        ):
            vary.append("Cookie")
        vary.extend(vary_on)
        if vary:
            add_vary(response, vary)

    @staticmethod
    def _conditional(
        request: HttpRequest, response: HttpResponseBase, has_etag: bool, make_etag: bool
    ) -> HttpResponseBase:
        """ETag a successful GET or HEAD if ``make_etag`` (the same ETag: HEAD's body is GET's; a
        view's own ETag, ``has_etag``, is kept) and answer its conditional headers, as Django's
        ``ConditionalGetMiddleware`` does; a 304 keeps the edge headers."""
        if not (
            request.method in _CACHEABLE_METHODS
            and isinstance(response, HttpResponse)  # not streaming and file responses
            and 200 <= response.status_code < 300
        ):
            return response
        if make_etag and not has_etag:
            set_response_etag(response)  # none for an empty body
        if request.META.keys().isdisjoint(_CONDITIONAL_HEADERS):
            # What get_conditional_response would conclude, without parsing four empty headers
            # (about 5 µs, 0.5 % of a 1 ms view: benchmarks/http_calls.py).
            return response
        last_modified = response.headers.get("Last-Modified")
        conditional = get_conditional_response(
            request,
            etag=response.headers.get("ETag"),
            last_modified=parse_http_date_safe(last_modified) if last_modified else None,
            response=response,
        )
        if conditional is None or conditional is response:
            return response
        if conditional.status_code == 304:
            for header in EDGE_HEADERS:
                if header in response.headers:
                    conditional.headers[header] = response.headers[header]
        return conditional

    @staticmethod
    def _server_timing(response: HttpResponseBase) -> None:
        scope = collector.current()
        if scope is None:
            return
        entry = f"tiercache-hits;desc={scope.hits}, tiercache-misses;desc={scope.misses}"
        existing = response.headers.get("Server-Timing")
        response.headers["Server-Timing"] = f"{existing}, {entry}" if existing else entry
