"""System checks: a bad ``TIERCACHE`` is reported at start-up, with a hint, never at request time.

Errors: E001 unknown setting key, E002 wrong type or value, E003 unknown ``CACHE_ALIAS``, E004
purger ``BACKEND`` not importable or not a purger, E005 purger option missing or invalid, E006
``TIMEOUT`` not a finite positive number, E007 ``DISPATCHER`` not importable, E008 a purger
secret (``API_TOKEN``, ``TOKEN``) that cannot be a token (empty, not a string, a space, quote or
control character inside).
Warnings: W001 query-tier cache not Redis-backed with ``DEBUG`` off, W002 ``PURGE_ASYNC`` with
purgers but no Celery broker configured, W003 the query-tier cache hides its errors
(``IGNORE_EXCEPTIONS``), W004 ``TierCacheMiddleware`` is not the first middleware, W005 a purger
secret with whitespace around it (stripped before use). No message ever shows a secret.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.utils.module_loading import import_string

from django_tiercache.conf import DEFAULTS, MAX_TIMEOUT, SETTING_NAME, tiercache_settings
from django_tiercache.edge.purgers import PurgerConfigError, build_purger
from django_tiercache.edge.purgers.base import PurgerSecretError

KNOWN_KEY_HEADERS = frozenset({"surrogate-key", "cache-tag", "xkey"})


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _is_statuses(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset) and all(
        _is_int(v, 100) and v < 600 for v in value
    )


def _is_key_headers(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(v, str) and v.lower() in KNOWN_KEY_HEADERS for v in value
    )


# name -> (predicate, what a valid value is)
_TOP: dict[str, tuple[Callable[[Any], bool], str]] = {
    "CACHE_ALIAS": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "KEY_PREFIX": (
        lambda v: isinstance(v, str) and bool(v) and v.isprintable() and " " not in v,
        "a non-empty string without spaces",
    ),
    "TIMEOUT": (lambda v: True, ""),  # E006 below
    "STALE_TIMEOUT": (_is_seconds, "a finite number of seconds >= 0"),
    "SINGLE_FLIGHT_WAIT": (_is_seconds, "a finite number of seconds >= 0"),
    "FAIL_OPEN": (lambda v: isinstance(v, bool), "True or False"),
    "PURGE_ASYNC": (lambda v: isinstance(v, bool), "True or False"),
    "PUBLISH_TIMEOUT": (
        lambda v: _is_seconds(v) and 0 < v <= 30,
        "a number of seconds above 0 and at most 30",
    ),
    "PURGERS": (lambda v: isinstance(v, dict), "a dict of purger name -> options dict"),
    "DISPATCHER": (lambda v: v is None or isinstance(v, str), "None or a dotted path"),
    "HTTP": (lambda v: isinstance(v, dict), "a dict"),
    "WARMERS": (
        lambda v: isinstance(v, list | tuple) and all(isinstance(p, str) and p for p in v),
        "a list of dotted paths to warmer functions",
    ),
    "ADMIN_ACTION": (lambda v: isinstance(v, bool), "True or False"),
}
_HTTP: dict[str, tuple[Callable[[Any], bool], str]] = {
    "BROWSER_MAX_AGE": (_is_seconds, "a finite number of seconds >= 0"),
    "EDGE_MAX_AGE": (_is_seconds, "a finite number of seconds >= 0"),
    "STALE_WHILE_REVALIDATE": (
        lambda v: v is None or _is_seconds(v),
        "None or a number of seconds >= 0",
    ),
    "STALE_IF_ERROR": (lambda v: v is None or _is_seconds(v), "None or a number of seconds >= 0"),
    "MAX_KEY_HEADER_BYTES": (lambda v: _is_int(v, 1024), "an integer >= 1024"),
    "CACHEABLE_STATUSES": (_is_statuses, "a list of HTTP status codes"),
    "KEY_HEADERS": (_is_key_headers, "a list of: Surrogate-Key, Cache-Tag, xkey"),
    "SERVER_TIMING": (lambda v: v is None or isinstance(v, bool), "None, True or False"),
}


def _validate(
    values: dict[str, Any], schema: dict[str, tuple[Callable[[Any], bool], str]], where: str
) -> Iterable[CheckMessage]:
    for name, value in values.items():
        if name not in schema:
            yield Error(
                f"Unknown setting {where}[{name!r}].",
                hint=f"Valid keys: {', '.join(sorted(schema))}. Check the spelling.",
                id="tiercache.E001",
            )
            continue
        predicate, expected = schema[name]
        if not predicate(value):
            yield Error(
                f"{where}[{name!r}] is {value!r:.80}; it must be {expected}.",
                hint="See the settings reference in the django-tiercache docs.",
                id="tiercache.E002",
            )


@register(Tags.compatibility)
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    """E001/E002/E006: unknown keys, wrong types, a TIMEOUT that is not finite and positive."""
    user = getattr(settings, SETTING_NAME, {})
    if not isinstance(user, dict):
        return [
            Error(
                f"settings.{SETTING_NAME} must be a dict, got {type(user).__name__}.",
                hint="Use TIERCACHE = {...}; every key is optional.",
                id="tiercache.E002",
            )
        ]
    messages = list(_validate(user, _TOP, SETTING_NAME))
    if isinstance(user.get("HTTP"), dict):
        messages += _validate(user["HTTP"], _HTTP, f'{SETTING_NAME}["HTTP"]')
    timeout = user.get("TIMEOUT", DEFAULTS["TIMEOUT"])
    if not (_is_seconds(timeout) and 0 < timeout < MAX_TIMEOUT):
        messages.append(
            Error(
                f"{SETTING_NAME}['TIMEOUT'] is {timeout!r:.80}; the query tier needs a finite TTL.",
                hint=f"Set a number of seconds in (0, {MAX_TIMEOUT}), e.g. 300. None (forever) "
                "is refused.",
                id="tiercache.E006",
            )
        )
    return messages


@register(Tags.caches)
def check_cache(**kwargs: Any) -> list[CheckMessage]:
    """E003: CACHE_ALIAS names no cache; W001: that cache is not Redis in production."""
    alias = tiercache_settings.CACHE_ALIAS
    if not isinstance(alias, str):
        return []  # reported by E002
    caches_setting = getattr(settings, "CACHES", {})
    if alias not in caches_setting:
        return [
            Error(
                f"{SETTING_NAME}['CACHE_ALIAS'] is {alias!r}, which is not in settings.CACHES.",
                hint=f"Add CACHES[{alias!r}] (django-redis) or set CACHE_ALIAS to one of "
                f"{', '.join(map(repr, caches_setting)) or 'your caches'}.",
                id="tiercache.E003",
            )
        ]
    backend = str(caches_setting[alias].get("BACKEND", ""))
    options = caches_setting[alias].get("OPTIONS", {})
    if options.get("IGNORE_EXCEPTIONS") or getattr(
        settings, "DJANGO_REDIS_IGNORE_EXCEPTIONS", False
    ):
        return [
            CheckWarning(
                f"The query-tier cache {alias!r} ignores its exceptions (IGNORE_EXCEPTIONS).",
                hint="A failed invalidation would then look like a success and leave stale "
                "entries. Remove IGNORE_EXCEPTIONS: the query tier fails open by itself "
                "(TIERCACHE['FAIL_OPEN']).",
                id="tiercache.W003",
            )
        ]
    if not settings.DEBUG and "redis" not in backend.lower():
        return [
            CheckWarning(
                f"The query-tier cache {alias!r} uses {backend!r}, not Redis.",
                hint="Version tokens must be shared by every process: use "
                "django_redis.cache.RedisCache (or Django's RedisCache) in production.",
                id="tiercache.W001",
            )
        ]
    return []


@register(Tags.compatibility)
def check_purgers(**kwargs: Any) -> list[CheckMessage]:
    """E004/E005: purger backends that cannot be imported or lack options; W002: no Celery."""
    purgers = tiercache_settings.PURGERS
    if not isinstance(purgers, dict):
        return []  # reported by E002
    messages: list[CheckMessage] = []
    for name, config in purgers.items():
        try:
            build_purger(name, config)
        except PurgerSecretError:
            continue  # check_purger_secrets says what is wrong
        except PurgerConfigError as exc:
            message = str(exc)
            backend_problem = "BACKEND" in message or "not a BasePurger" in message
            messages.append(
                Error(
                    message,
                    hint="BACKEND must be a dotted path such as "
                    "'django_tiercache.purgers.fastly.FastlyPurger'."
                    if backend_problem
                    else "Add the option to this purger's entry in TIERCACHE['PURGERS'].",
                    obj=name,
                    id="tiercache.E004" if backend_problem else "tiercache.E005",
                )
            )
    if purgers and tiercache_settings.PURGE_ASYNC is True and not _celery_configured():
        messages.append(
            CheckWarning(
                "PURGE_ASYNC is on but no Celery broker is configured: purges will stay pending "
                "in the outbox.",
                hint="Configure a Celery app with a broker (CELERY_BROKER_URL), or set "
                "TIERCACHE['PURGE_ASYNC'] = False to purge inline after commit.",
                id="tiercache.W002",
            )
        )
    return messages


@register(Tags.security)
def check_purger_secrets(**kwargs: Any) -> list[CheckMessage]:
    """E008: a secret that cannot be sent as a token; W005: whitespace around one (stripped)."""
    from django_tiercache.edge.purgers.http_api import secret_problem
    from django_tiercache.redact import SECRET_OPTIONS

    purgers = tiercache_settings.PURGERS
    if not isinstance(purgers, dict):
        return []
    messages: list[CheckMessage] = []
    for name, config in purgers.items():
        for option in SECRET_OPTIONS if isinstance(config, dict) else ():
            if config.get(option) in (None, ""):
                continue  # unset: E005 when the purger requires it
            value, where = config[option], f"{SETTING_NAME}['PURGERS'][{name!r}][{option!r}]"
            problem = secret_problem(value)
            if problem:
                messages.append(
                    Error(
                        f"{where} {problem}.",
                        hint="Paste the token alone, without quotes; read it with "
                        "os.environ[...].strip() if its source adds a newline.",
                        obj=name,
                        id="tiercache.E008",
                    )
                )
            elif value != value.strip():
                messages.append(
                    CheckWarning(
                        f"{where} has whitespace around it (a newline from a secrets file?); it "
                        "is stripped before use.",
                        hint="Strip it where it is read, e.g. os.environ['FASTLY_PURGE_TOKEN']"
                        ".strip().",
                        obj=name,
                        id="tiercache.W005",
                    )
                )
    return messages


def _celery_configured() -> bool:
    try:
        from celery import current_app
    except ImportError:
        return False
    conf = current_app.conf
    return bool(conf.broker_url or conf.task_always_eager)


MIDDLEWARE_PATH = "django_tiercache.middleware.TierCacheMiddleware"


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


@register(Tags.compatibility)
def check_dispatcher(**kwargs: Any) -> list[CheckMessage]:
    """E007: DISPATCHER is not importable."""
    path = tiercache_settings.DISPATCHER
    if not isinstance(path, str):
        return []
    try:
        import_string(path)
    except ImportError as exc:
        return [
            Error(
                f"{SETTING_NAME}['DISPATCHER'] {path!r} cannot be imported: {exc}",
                hint="Use a dotted path to f(row_ids, using), or None for the default.",
                id="tiercache.E007",
            )
        ]
    return []
