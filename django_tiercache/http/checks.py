"""System checks of the HTTP tier: ``TIERCACHE["HTTP"]`` (E001/E002), the middleware's place
(W004), and ``origin_cache`` views without the middleware (W008). Registered on import, from
``AppConfig.ready()``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, register
from django.core.checks import Warning as CheckWarning
from django.urls import get_resolver

from django_tiercache.checks import Schema, is_int, is_seconds, validate
from django_tiercache.conf import SETTING_NAME
from django_tiercache.http.decorators import origin_cache_views
from django_tiercache.http.headers import KEY_HEADERS

MIDDLEWARE_PATH = "django_tiercache.middleware.TierCacheMiddleware"


def _is_statuses(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset) and all(
        is_int(v, 100) and v < 600 for v in value
    )


def _is_key_headers(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(v, str) and v.lower() in KEY_HEADERS for v in value
    )


_HTTP: Schema = {
    "BROWSER_MAX_AGE": (is_seconds, "a finite number of seconds >= 0"),
    "EDGE_MAX_AGE": (is_seconds, "a finite number of seconds >= 0"),
    "STALE_WHILE_REVALIDATE": (
        lambda v: v is None or is_seconds(v),
        "None or a number of seconds >= 0",
    ),
    "STALE_IF_ERROR": (lambda v: v is None or is_seconds(v), "None or a number of seconds >= 0"),
    "MAX_KEY_HEADER_BYTES": (lambda v: is_int(v, 1024), "an integer >= 1024"),
    "CACHEABLE_STATUSES": (_is_statuses, "a list of HTTP status codes"),
    "KEY_HEADERS": (
        _is_key_headers,
        f"a list of: {', '.join(header for header, _ in KEY_HEADERS.values())}",
    ),
    "SERVER_TIMING": (lambda v: v is None or isinstance(v, bool), "None, True or False"),
    "ETAG": (lambda v: isinstance(v, bool), "True or False"),
}


@register(Tags.compatibility)
def check_http_settings(**kwargs: Any) -> list[CheckMessage]:
    """E001/E002: unknown keys and wrong values in ``TIERCACHE["HTTP"]``."""
    http = getattr(settings, SETTING_NAME, {})
    http = http.get("HTTP") if isinstance(http, dict) else None
    if not isinstance(http, dict):
        return []  # absent, or reported by the core check (E002)
    return list(validate(http, _HTTP, f'{SETTING_NAME}["HTTP"]'))


@register(Tags.compatibility)
def check_middleware(**kwargs: Any) -> list[CheckMessage]:
    """W004: TierCacheMiddleware must come first, to see what every other middleware adds."""
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if MIDDLEWARE_PATH in middleware and middleware[0] != MIDDLEWARE_PATH:
        return [
            CheckWarning(
                "TierCacheMiddleware is not the first entry of MIDDLEWARE.",
                hint="Put it first (outermost), like UpdateCacheMiddleware: it must see the "
                "cookies and Vary headers that session, CSRF and auth middleware add, or a "
                "user-specific response could be sent as public.",
                id="tiercache.W004",
            )
        ]
    return []


@register(Tags.compatibility, Tags.urls)
def check_origin_cache_needs_the_middleware(**kwargs: Any) -> list[CheckMessage]:
    """W008: views use ``origin_cache`` but TierCacheMiddleware is not in MIDDLEWARE."""
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if any(str(entry).endswith(".TierCacheMiddleware") for entry in middleware):
        return []
    if getattr(settings, "ROOT_URLCONF", None):
        try:
            patterns = get_resolver().url_patterns  # imports the views: their decorators run
            del patterns
        except Exception:  # Django's own URL checks report a broken URLconf
            return []
    views = origin_cache_views()
    if not views:
        return []
    shown = ", ".join(views[:3]) + (f" and {len(views) - 3} more" if len(views) > 3 else "")
    return [
        CheckWarning(
            f"origin_cache is used ({shown}) but TierCacheMiddleware is not in MIDDLEWARE: "
            "those views are never edge-cached and carry no Surrogate-Key.",
            hint=f"Add {MIDDLEWARE_PATH!r} as the first entry of MIDDLEWARE.",
            id="tiercache.W008",
        )
    ]
