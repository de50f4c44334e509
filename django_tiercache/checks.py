"""System checks: a bad ``TIERCACHE`` is reported at start-up, with a hint, never at request time.

Errors: E001 unknown setting key, E002 wrong type or value, E003 unknown ``CACHE_ALIAS``, E004
purger ``BACKEND`` not importable or not a purger, E005 purger option missing or invalid, E006
``TIMEOUT`` not a finite positive number, E007 ``DISPATCHER`` not importable, E008 a purger
secret (``API_TOKEN``, ``TOKEN``) that cannot be a token (empty, not a string, a space, quote or
control character inside), E011 ``READ_REPLICAS`` names an alias that is not in
``DATABASES``.
Warnings: W001 query-tier cache not Redis-backed with ``DEBUG`` off, W003 the query-tier cache
hides its errors (``IGNORE_EXCEPTIONS``), W004 ``TierCacheMiddleware`` is not the first
middleware, W005 a purger secret with whitespace around it (stripped before use), W007 a setting
whose name looks like a misspelling of ``TIERCACHE`` (``TIER_CACHE``, ``TIERCACHES``…: ignored),
E010 a ``WARMERS`` entry that cannot be imported or is not callable; I001 (info) no usable
Celery: purges are delivered after each commit. No message ever shows a secret.
The query tier's own (E009 a Redis shape it refuses, W006 no socket timeouts) are in
:mod:`django_tiercache.query.checks`.

This module checks the settings every tier shares; the HTTP tier's (``TIERCACHE["HTTP"]``, the
middleware) are in :mod:`django_tiercache.http.checks`, the edge tier's (purgers, dispatcher) in
:mod:`django_tiercache.edge.checks`. Each registers on import, from ``AppConfig.ready()``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.utils.module_loading import import_string

from django_tiercache.conf import DEFAULTS, MAX_TIMEOUT, SETTING_NAME, tiercache_settings


def is_int(value: Any, minimum: int = 0) -> bool:
    """An int (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_seconds(value: Any) -> bool:
    """A finite, non-negative number of seconds (not a bool)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


_TOP: Schema = {
    "CACHE_ALIAS": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "KEY_PREFIX": (
        lambda v: isinstance(v, str) and bool(v) and v.isprintable() and " " not in v,
        "a non-empty string without spaces",
    ),
    "TIMEOUT": (lambda v: True, ""),  # E006 below
    "STALE_TIMEOUT": (is_seconds, "a finite number of seconds >= 0"),
    "SINGLE_FLIGHT_WAIT": (is_seconds, "a finite number of seconds >= 0"),
    "FAIL_OPEN": (lambda v: isinstance(v, bool), "True or False"),
    "RETRY_INTERVAL": (is_seconds, "a finite number of seconds >= 0"),
    "RECOVERY_POLL": (lambda v: v is None or is_seconds(v), "None or a number of seconds >= 0"),
    "WAIT_FOR_REPLICAS": (is_int, "an integer >= 0"),
    "WAIT_TIMEOUT": (is_seconds, "a finite number of seconds >= 0"),
    "PURGE_ASYNC": (lambda v: isinstance(v, bool), "True or False"),
    "PUBLISH_TIMEOUT": (
        lambda v: is_seconds(v) and 0 < v <= 30,
        "a number of seconds above 0 and at most 30",
    ),
    "PURGERS": (lambda v: isinstance(v, dict), "a dict of purger name -> options dict"),
    "DISPATCHER": (lambda v: v is None or isinstance(v, str), "None or a dotted path"),
    "READ_REPLICAS": (
        lambda v: v is None or (isinstance(v, list | tuple) and all(isinstance(a, str) for a in v)),
        "None or a list of database aliases",
    ),
    "REPLICA_WAIT": (is_seconds, "a finite number of seconds >= 0"),
    "HTTP": (lambda v: isinstance(v, dict), "a dict"),
    "WARMERS": (
        lambda v: isinstance(v, list | tuple) and all(isinstance(p, str) and p for p in v),
        "a list of dotted paths to warmer functions",
    ),
    "ADMIN_ACTION": (lambda v: isinstance(v, bool), "True or False"),
}
#: A setting's name -> (predicate, what a valid value is).
Schema = dict[str, tuple[Callable[[Any], bool], str]]


def validate(values: dict[str, Any], schema: Schema, where: str) -> Iterable[CheckMessage]:
    """E001 for each unknown name in ``values``, E002 for each value ``schema`` refuses."""
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
    messages = list(validate(user, _TOP, SETTING_NAME))
    timeout = user.get("TIMEOUT", DEFAULTS["TIMEOUT"])
    if not (is_seconds(timeout) and 0 < timeout < MAX_TIMEOUT):
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
def check_setting_name(**kwargs: Any) -> list[CheckMessage]:
    """W007: a setting named like ``TIERCACHE`` but not quite (it would be silently ignored)."""
    wanted = SETTING_NAME.replace("_", "")
    names = [
        name
        for name in dir(settings)
        if name.isupper()
        and name != SETTING_NAME
        and (
            name.replace("_", "") == wanted
            or difflib.SequenceMatcher(None, name.replace("_", ""), wanted).ratio() >= 0.85
        )
    ]
    return [
        CheckWarning(
            f"settings.{name} looks like a misspelling of settings.{SETTING_NAME}; "
            "django-tiercache ignores it.",
            hint=f"Rename it to {SETTING_NAME}.",
            id="tiercache.W007",
        )
        for name in names
    ]


@register(Tags.compatibility)
def check_warmers(**kwargs: Any) -> list[CheckMessage]:
    """E010: a ``TIERCACHE["WARMERS"]`` entry that cannot be imported or called."""
    paths = tiercache_settings.WARMERS
    if not isinstance(paths, list | tuple):
        return []  # reported by E002
    messages: list[CheckMessage] = []
    for path in paths:
        try:
            problem = "" if callable(import_string(path)) else "is not callable"
        except ImportError as exc:
            problem = f"cannot be imported: {exc}"
        if problem:
            messages.append(
                Error(
                    f"{SETTING_NAME}['WARMERS'] entry {path!r} {problem}.",
                    hint="Each entry is the dotted path of a function without arguments, e.g. "
                    "'shop.warmers.home_page_products'.",
                    id="tiercache.E010",
                )
            )
    return messages


@register(Tags.compatibility)
def check_replicas(**kwargs: Any) -> list[CheckMessage]:
    """E011: READ_REPLICAS names an alias that DATABASES does not define."""
    aliases = tiercache_settings.READ_REPLICAS
    if not isinstance(aliases, list | tuple):
        return []  # None, or reported by E002
    unknown = [a for a in aliases if isinstance(a, str) and a not in settings.DATABASES]
    return [
        Error(
            f"{SETTING_NAME}['READ_REPLICAS'] names {alias!r}, which is not in settings.DATABASES.",
            hint=f"List aliases of DATABASES ({', '.join(map(repr, settings.DATABASES))}), or "
            "use None to count the aliases whose settings describe a replica (TEST['MIRROR'], "
            "or the same NAME on another HOST/PORT).",
            id="tiercache.E011",
        )
        for alias in unknown
    ]
