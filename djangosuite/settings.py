"""Settings for Django's ``runtests.py`` (``--settings=djangosuite.settings``).

The database follows the project's test variables (``TIERCACHE_TEST_DATABASE``,
``TIERCACHE_TEST_POSTGRES_*``), the query-tier cache ``TIERCACHE_TEST_REDIS_URL`` (fakeredis
without it). The mode (:mod:`djangosuite.modes`) and the outcome file come from the harness.
"""

from __future__ import annotations

import os
import sys

# runtests.py (run as a script, so ``__main__``) installs ALWAYS_INSTALLED_APPS plus the test
# modules. The library's app joins that list before runtests reads it: its ready() connects the
# receivers that invalidate. Nothing else of how Django's suite runs is changed.
_runtests = sys.modules.get("__main__")
_always = getattr(_runtests, "ALWAYS_INSTALLED_APPS", None)
if _always is None:
    raise RuntimeError("djangosuite.settings is meant for Django's tests/runtests.py")
if "django_tiercache" not in _always:
    _always.append("django_tiercache")

SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
TEST_RUNNER = "djangosuite.runner.SuiteRunner"

if os.environ.get("TIERCACHE_TEST_DATABASE", "sqlite") == "postgres":
    _name = os.environ.get("TIERCACHE_TEST_POSTGRES_NAME", "tiercache")
    _server = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("TIERCACHE_TEST_POSTGRES_HOST", "127.0.0.1"),
        "PORT": os.environ.get("TIERCACHE_TEST_POSTGRES_PORT", "5432"),
        "USER": os.environ.get("TIERCACHE_TEST_POSTGRES_USER", "postgres"),
    }
    DATABASES = {
        "default": {**_server, "NAME": _name, "TEST": {"NAME": f"{_name}_djsuite"}},
        "other": {**_server, "NAME": _name, "TEST": {"NAME": f"{_name}_djsuite_other"}},
    }
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3"},
        "other": {"ENGINE": "django.db.backends.sqlite3"},
    }

_redis_url = os.environ.get("TIERCACHE_TEST_REDIS_URL")
_redis_options: dict[str, object] = {}
if not _redis_url:
    import fakeredis

    _redis_url = "redis://fakeredis/0"
    _redis_options = {"CONNECTION_POOL_KWARGS": {"connection_class": fakeredis.FakeRedisConnection}}

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "tiercache": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": _redis_url,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1, **_redis_options},
    },
}

TIERCACHE = {
    "CACHE_ALIAS": "tiercache",
    "KEY_PREFIX": f"djsuite{os.getpid()}",
    "PURGE_ASYNC": False,
    "FAIL_OPEN": False,  # a cache error is a library error here, not a quiet database read
    # No look at the journal every few seconds: Django's tests count their queries exactly, and
    # nothing fails here that another process would have to learn of.
    "RECOVERY_POLL": None,
    # "other" is an independent database, never a replica of "default": no WAL position read after
    # each commit (Django's tests assert the last query's SQL).
    "READ_REPLICAS": [],
}
