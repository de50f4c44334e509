"""Header helpers of the HTTP tier, built on :mod:`django.utils.cache`.

Key headers hold normalised keys (see :func:`django_tiercache.keys.normalize_key`), sorted and
deduplicated: ``Surrogate-Key`` and ``xkey`` space-separated, ``Cache-Tag`` comma-separated. A key
list that does not fit ``MAX_KEY_HEADER_BYTES`` first collapses object keys (``app.model:pk``) to
their table keys (``app.model``); when even that does not fit, the response must not be
edge-cached: a truncated key list would leave pages that no purge reaches.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import NamedTuple

from django.apps import apps
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.functional import LazyObject

__all__ = [
    "EDGE_HEADERS",
    "KEY_HEADERS",
    "SETS_COOKIE",
    "SHARED_DIRECTIVES",
    "EdgeValues",
    "add_vary",
    "cache_control_directives",
    "collapse_object_keys",
    "edge_values",
    "fit_keys",
    "header_names",
    "key_header_bytes",
    "make_private",
    "resolve_key_headers",
    "session_accessed",
    "strip_edge_headers",
    "surrogate_control",
    "user_specific_reason",
    "write_key_headers",
]

#: Key headers by lower-case setting value: (header name, separator).
KEY_HEADERS: dict[str, tuple[str, str]] = {
    "surrogate-key": ("Surrogate-Key", " "),
    "cache-tag": ("Cache-Tag", ","),
    "xkey": ("xkey", " "),
}
#: Every header that addresses the edge; none of them may leave with a user-specific response.
EDGE_HEADERS = ("Surrogate-Control", "Surrogate-Key", "Cache-Tag", "xkey")
#: :func:`user_specific_reason` for a response that sets a cookie.
SETS_COOKIE = "it sets a cookie"
#: Cache-Control directives that let a shared cache store the response.
SHARED_DIRECTIVES = frozenset({"public", "s-maxage"})


def header_names(response: HttpResponseBase) -> set[str]:
    """Lower-case names of the headers ``response`` has, in one pass over ``response.headers``.

    The middleware asks several "has it this header?" questions per response; through
    ``response.headers`` each absent name costs a raised ``KeyError`` (about 1 µs), a set lookup
    almost nothing.
    """
    return {name.lower() for name in response.headers}


def key_header_bytes(keys: Iterable[str]) -> int:
    """Length in bytes of the key header value (normalised keys are ASCII; separators 1 byte)."""
    if not isinstance(keys, (set, frozenset)):
        keys = set(keys)
    return sum(map(len, keys)) + max(len(keys) - 1, 0)


def collapse_object_keys(keys: Iterable[str]) -> set[str]:
    """Replace each object key of an installed model (``app.model:pk``) with its table key.

    Keys that are not object keys of a model (``shop.home``, ``reviews``) are kept as they are:
    only a model's table key is purged on every change to one of its rows.
    """
    tables = {model._meta.label_lower for model in apps.get_models(include_auto_created=True)}
    collapsed = set()
    for key in keys:
        table, sep, _pk = key.partition(":")
        collapsed.add(table if sep and table in tables else key)
    return collapsed


def fit_keys(keys: set[str], max_bytes: int) -> set[str] | None:
    """``keys`` if they fit in ``max_bytes``, else collapsed to table keys, else None."""
    if key_header_bytes(keys) <= max_bytes:
        return keys
    collapsed = collapse_object_keys(keys)
    if key_header_bytes(collapsed) <= max_bytes:
        return collapsed
    return None


def surrogate_control(
    max_age: int, stale_while_revalidate: int | None, stale_if_error: int | None
) -> str:
    """``Surrogate-Control`` value; a None stale window is left out."""
    value = f"max-age={max_age}"
    if stale_while_revalidate is not None:
        value += f", stale-while-revalidate={stale_while_revalidate}"
    if stale_if_error is not None:
        value += f", stale-if-error={stale_if_error}"
    return value


class EdgeValues(NamedTuple):
    """Cache-Control and Surrogate-Control of an edge-cached response (see :func:`edge_values`)."""

    browser_max_age: int
    edge_max_age: int
    #: What ``patch_cache_control`` writes on a response without Cache-Control.
    cache_control: str
    surrogate_control: str


def edge_values(
    browser_max_age: int,
    edge_max_age: int,
    stale_while_revalidate: int | None,
    stale_if_error: int | None,
) -> EdgeValues:
    """Cache-Control and Surrogate-Control of an edge-cached response; the middleware memoises
    them per policy."""
    cache_control = f"public, max-age={browser_max_age}, s-maxage={edge_max_age}"
    surrogate = surrogate_control(edge_max_age, stale_while_revalidate, stale_if_error)
    return EdgeValues(browser_max_age, edge_max_age, cache_control, surrogate)


def resolve_key_headers(names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``(header, separator)`` of each ``KEY_HEADERS`` name; an unknown name raises KeyError."""
    return tuple(KEY_HEADERS[name.lower()] for name in names)


def write_key_headers(
    response: HttpResponseBase,
    ordered: list[str],
    spaced: str,
    key_headers: Iterable[tuple[str, str]],
) -> None:
    """Write each key header of ``key_headers`` (from :func:`resolve_key_headers`).

    ``ordered`` are the keys, sorted, deduplicated and fitting ``MAX_KEY_HEADER_BYTES`` (see
    :func:`fit_keys`); ``spaced`` is ``" ".join(ordered)``.
    """
    for header, separator in key_headers:
        response.headers[header] = spaced if separator == " " else separator.join(ordered)


def strip_edge_headers(response: HttpResponseBase) -> None:
    """Remove Surrogate-Control and every key header."""
    for header in EDGE_HEADERS:
        response.headers.pop(header, None)


def _directives(value: str) -> list[str]:
    """The directives of a Cache-Control value, as Django's ``patch_cache_control`` splits it."""
    return [directive.strip() for directive in value.split(",") if directive.strip()]


def make_private(response: HttpResponseBase, *, no_store: bool = False) -> None:
    """Keep ``response`` out of shared caches: ``private`` (or ``no-store``), no edge headers.

    ``public`` and ``s-maxage`` are dropped; the view's other directives (a browser
    ``max-age``, ``must-revalidate``) are kept.
    """
    current = response.headers.get("Cache-Control", "")
    if current:
        kept = [
            directive
            for directive in _directives(current)
            if directive.split("=", 1)[0].strip().lower() not in SHARED_DIRECTIVES
        ]
        response.headers["Cache-Control"] = ", ".join(kept)
    if no_store:
        patch_cache_control(response, private=True, no_store=True)
    else:
        patch_cache_control(response, private=True)
    strip_edge_headers(response)


def cache_control_directives(response: HttpResponseBase) -> set[str]:
    """Lower-case directive names of the response's Cache-Control header."""
    value = response.headers.get("Cache-Control")
    if not value:
        return set()
    return {field.split("=", 1)[0].strip().lower() for field in _directives(value)}


def _is_authenticated(user: object) -> bool:
    """Whether ``request.user`` is a loaded, authenticated user; a lazy user is never loaded.

    Django's ``AuthenticationMiddleware`` sets a lazy user that loads itself from the session, so
    a view that looked at it has read the session, which :func:`user_specific_reason` sees. A
    lazy user of another kind, loaded without the session or an ``Authorization`` header, is not
    seen: Django has no public way to tell whether a lazy object was loaded.
    """
    return not isinstance(user, LazyObject) and bool(getattr(user, "is_authenticated", False))


def session_accessed(request: HttpRequest) -> bool:
    """Whether the request's session (if any) was read or written."""
    session = getattr(request, "session", None)
    return session is not None and bool(getattr(session, "accessed", False))


def user_specific_reason(
    request: HttpRequest, response: HttpResponseBase, names: AbstractSet[str] | None = None
) -> str | None:
    """Why ``response`` may depend on who asked, or None when it cannot.

    A response is user-specific when it sets a cookie, the request carries ``Authorization``,
    the session was read or written, or a user was loaded and is authenticated. The user is
    never loaded here (that would touch the session). ``names`` are the response's
    :func:`header_names`, if the caller has them.
    """
    if names is None:
        names = header_names(response)
    if response.cookies or "set-cookie" in names:
        return SETS_COOKIE
    if "HTTP_AUTHORIZATION" in request.META:
        return "the request has an Authorization header"
    if session_accessed(request):
        return "the session was accessed"
    user = vars(request).get("user")
    if user is not None and _is_authenticated(user):
        return "the user is authenticated"
    return None


def add_vary(response: HttpResponseBase, headers: Iterable[str]) -> None:
    """Merge ``headers`` into Vary: existing order kept, new ones appended, no duplicates."""
    headers = list(headers)
    if headers:
        patch_vary_headers(response, headers)
