"""Test settings. Embedded defaults (SQLite + fakeredis) unless the environment names real services:

- ``TIERCACHE_TEST_DATABASE=postgres``
  (``TIERCACHE_TEST_POSTGRES_HOST``/``_PORT``/``_USER``/``_NAME``)
- ``TIERCACHE_TEST_REDIS_URL=redis://127.0.0.1:6379/15``
"""

from __future__ import annotations

import os

SECRET_KEY = "tiercache-tests-only"
DEBUG = False
USE_TZ = True
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"  # the live_server fixture needs one
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "django_tiercache",
    "tests.testapp",
]

MIDDLEWARE = [
    "django_tiercache.middleware.TierCacheMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

if os.environ.get("TIERCACHE_TEST_DATABASE", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("TIERCACHE_TEST_POSTGRES_NAME", "tiercache"),
            "HOST": os.environ.get("TIERCACHE_TEST_POSTGRES_HOST", "127.0.0.1"),
            "PORT": os.environ.get("TIERCACHE_TEST_POSTGRES_PORT", "5432"),
            "USER": os.environ.get("TIERCACHE_TEST_POSTGRES_USER", "postgres"),
            "TEST": {"NAME": "test_" + os.environ.get("TIERCACHE_TEST_POSTGRES_NAME", "tiercache")},
        }
    }
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

REDIS_URL = os.environ.get("TIERCACHE_TEST_REDIS_URL")
if REDIS_URL:
    _redis_options: dict[str, object] = {}
else:
    import fakeredis

    REDIS_URL = "redis://fakeredis/0"
    _redis_options = {"CONNECTION_POOL_KWARGS": {"connection_class": fakeredis.FakeRedisConnection}}

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": 0.5,
            "SOCKET_TIMEOUT": 0.5,
            **_redis_options,
        },
    }
}

CELERY_TASK_ALWAYS_EAGER = True

# Tests retry a failed cache at once (no circuit breaker) and never look at the outbox on their
# own (a query the tests that count queries would see); the tests of both turn them on.
TIERCACHE: dict[str, object] = {"PURGE_ASYNC": False, "RETRY_INTERVAL": 0, "RECOVERY_POLL": None}
