"""Header helpers of the HTTP tier, built on :mod:`django.utils.cache`.

Key headers hold normalised keys (see :func:`django_tiercache.keys.normalize_key`), sorted and
deduplicated: ``Surrogate-Key`` and ``xkey`` space-separated, ``Cache-Tag`` comma-separated. A key
list that does not fit ``MAX_KEY_HEADER_BYTES`` first collapses object keys (``app.model:pk``) to
their table keys (``app.model``); when even that does not fit, the response must not be
edge-cached: a truncated key list would leave pages that no purge reaches.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import NamedTuple

from django.apps import apps
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.functional import LazyObject, empty

__all__ = [
    "EDGE_HEADERS",
    "KEY_HEADERS",
    "SETS_COOKIE",
    "add_vary",
    "cache_control_directives",
    "collapse_object_keys",
    "fit_keys",
    "format_cache_tag",
    "format_surrogate_key",
    "key_header_bytes",
    "make_private",
    "set_weak_etag",
    "strip_edge_headers",
    "surrogate_control",
    "user_specific_reason",
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
# How django.utils.cache splits Cache-Control and Vary.
_DELIMITER = re.compile(r"\s*,\s*")
# Cache-Control directives that let a shared cache store the response.
_SHARED_DIRECTIVES = frozenset({"public", "s-maxage"})
_EDGE_HEADERS_LOWER = tuple(header.lower() for header in EDGE_HEADERS)
# Copied for each ETag: ``hashlib.sha256()`` looks the algorithm up in OpenSSL every time, which
# costs a few µs per request once a view has pushed that code out of the CPU caches.
_SHA256 = hashlib.sha256()


# The middleware runs on every request, so header reads and writes below go through the
# dict behind ``response.headers`` (Django's ``ResponseHeaders._store``: ``{lower-case name:
# (name, value)}``): a membership test on the mapping itself costs a raised and caught KeyError
# when the header is missing, and every write re-validates the name. Results are identical.


def _is_plain(value: str) -> bool:
    """Whether ``ResponseHeaders`` would store ``value`` unchanged: ASCII without CR or LF."""
    return type(value) is str and value.isascii() and "\n" not in value and "\r" not in value


def _set_header(response: HttpResponseBase, name: str, value: str) -> None:
    """``response.headers[name] = value`` for a constant ASCII ``name``, only faster.

    ``ResponseHeaders.__setitem__`` stores a value that encodes to latin-1 and has no CR/LF
    unchanged: a plain ASCII value is stored directly, anything else takes the validating path
    (MIME-encoded, or :class:`~django.http.BadHeaderError`).
    """
    if _is_plain(value):
        response.headers._store[name.lower()] = (name, value)
    else:
        response.headers[name] = value


def format_surrogate_key(keys: Iterable[str]) -> str:
    """``Surrogate-Key`` / ``xkey`` value: keys sorted, deduplicated, space-separated."""
    return " ".join(sorted(set(keys)))


def format_cache_tag(keys: Iterable[str]) -> str:
    """``Cache-Tag`` value: keys sorted, deduplicated, comma-separated."""
    return ",".join(sorted(set(keys)))


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


class _EdgeValues(NamedTuple):
    """Cache-Control and Surrogate-Control of an edge-cached response (see :func:`_edge_values`)."""

    browser_max_age: int
    edge_max_age: int
    #: What ``patch_cache_control`` writes on a response without Cache-Control.
    cache_control: str
    surrogate_control: str


def _edge_values(
    browser_max_age: int,
    edge_max_age: int,
    stale_while_revalidate: int | None,
    stale_if_error: int | None,
) -> _EdgeValues:
    """Cache-Control and Surrogate-Control of an edge-cached response; the middleware memoises
    them per policy."""
    cache_control = f"public, max-age={browser_max_age}, s-maxage={edge_max_age}"
    surrogate = surrogate_control(edge_max_age, stale_while_revalidate, stale_if_error)
    return _EdgeValues(browser_max_age, edge_max_age, cache_control, surrogate)


def _resolve_key_headers(names: Iterable[str]) -> tuple[tuple[str, str, str], ...]:
    """``(lower-case header, header, separator)`` of each ``KEY_HEADERS`` name.

    An unknown name raises KeyError.
    """
    resolved = []
    for name in names:
        header, separator = KEY_HEADERS[name.lower()]
        resolved.append((header.lower(), header, separator))
    return tuple(resolved)


def _write_key_headers(
    response: HttpResponseBase,
    ordered: list[str],
    spaced: str,
    key_headers: Iterable[tuple[str, str, str]],
) -> None:
    """Write each key header of ``key_headers`` (from :func:`_resolve_key_headers`).

    ``ordered`` are the keys, sorted, deduplicated and fitting ``MAX_KEY_HEADER_BYTES`` (see
    :func:`fit_keys`); ``spaced`` is ``" ".join(ordered)``.
    """
    # Separators are plain, so every key header is plain when the space-separated one is.
    plain = _is_plain(spaced)
    store = response.headers._store
    for lower, header, separator in key_headers:
        value = spaced if separator == " " else separator.join(ordered)
        if plain:
            store[lower] = (header, value)
        else:
            response.headers[header] = value


def strip_edge_headers(response: HttpResponseBase) -> None:
    """Remove Surrogate-Control and every key header."""
    store = response.headers._store
    for header in _EDGE_HEADERS_LOWER:
        store.pop(header, None)


def make_private(response: HttpResponseBase, *, no_store: bool = False) -> None:
    """Keep ``response`` out of shared caches: ``private`` (or ``no-store``), no edge headers.

    ``public`` and ``s-maxage`` are dropped; the view's other directives (a browser
    ``max-age``, ``must-revalidate``) are kept.
    """
    current = response.headers.get("Cache-Control", "")
    if current:
        kept = [
            directive
            for directive in _DELIMITER.split(current)
            if directive.split("=", 1)[0].strip().lower() not in _SHARED_DIRECTIVES
        ]
        response.headers["Cache-Control"] = ", ".join(kept)
    if no_store:
        patch_cache_control(response, private=True, no_store=True)
    else:
        patch_cache_control(response, private=True)
    strip_edge_headers(response)


def cache_control_directives(response: HttpResponseBase) -> set[str]:
    """Lower-case directive names of the response's Cache-Control header."""
    found = response.headers._store.get("cache-control")
    if found is None or not found[1]:
        return set()
    value = found[1]
    return {field.split("=", 1)[0].strip().lower() for field in _DELIMITER.split(value)}


def _is_authenticated(user: object) -> bool:
    """Whether ``request.user`` is loaded and authenticated; a lazy user is never loaded."""
    if isinstance(user, LazyObject):
        user = vars(user).get("_wrapped", empty)
        if user is empty:
            return False
    return bool(getattr(user, "is_authenticated", False))


def _session_accessed(request: HttpRequest) -> bool:
    """Whether the request's session (if any) was read or written."""
    session = getattr(request, "session", None)
    return session is not None and bool(getattr(session, "accessed", False))


def user_specific_reason(request: HttpRequest, response: HttpResponseBase) -> str | None:
    """Why ``response`` may depend on who asked, or None when it cannot.

    A response is user-specific when it sets a cookie, the request carries ``Authorization``,
    the session was read or written, or a user was loaded and is authenticated. The user is
    never loaded here (that would touch the session).
    """
    if response.cookies or "set-cookie" in response.headers._store:
        return SETS_COOKIE
    if "HTTP_AUTHORIZATION" in request.META:
        return "the request has an Authorization header"
    if _session_accessed(request):
        return "the session was accessed"
    user = vars(request).get("user")
    if user is not None and _is_authenticated(user):
        return "the user is authenticated"
    return None


def add_vary(response: HttpResponseBase, headers: Iterable[str]) -> None:
    """Merge ``headers`` into Vary: existing order kept, new ones appended, no duplicates."""
    if not isinstance(headers, (list, tuple)):
        headers = list(headers)
    if len(headers) == 1 and "vary" not in response.headers._store:
        _set_header(response, "Vary", headers[0])  # patch_vary_headers' result, only faster
    elif headers:
        patch_vary_headers(response, headers)


def set_weak_etag(response: HttpResponseBase) -> str | None:
    """Give a non-streaming response without an ETag a weak one from its body; return the ETag."""
    store = response.headers._store
    found = store.get("etag")
    if found is not None:
        return found[1]
    if response.streaming:
        return None
    content: bytes = getattr(response, "content", b"")
    # SHA-256 rather than a faster CRC-32: part of a page can be user content, and a crafted
    # collision would let a CDN or browser revalidating a removed version get a 304 and keep it.
    # It is also the fastest collision-resistant hash in hashlib on CPUs with SHA extensions.
    digest = _SHA256.copy()
    digest.update(content)
    etag = f'W/"{digest.hexdigest()[:32]}"'
    store["etag"] = ("ETag", etag)  # ASCII by construction
    return etag
