"""Settings of the outbox load benchmark (``benchmarks/outbox_load.py``) and of its workers.

Everything comes from the environment the benchmark sets: the PostgreSQL database, the query tier's
Redis, and the URL of the local HTTP stub that stands in for the Fastly API.
"""

from __future__ import annotations

import os

SECRET_KEY = "outbox-benchmark"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django_tiercache", "benchmarks.benchapp"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("TIERCACHE_BENCH_OUTBOX_DB", "tiercache_outbox_bench"),
        "HOST": os.environ.get("TIERCACHE_BENCH_PG_HOST", "127.0.0.1"),
        "USER": os.environ.get("TIERCACHE_BENCH_PG_USER", "postgres"),
        "CONN_MAX_AGE": None,
    }
}
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ.get("TIERCACHE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
    }
}
TIERCACHE = {
    "KEY_PREFIX": "tc-outbox-bench",
    "PURGERS": {
        "fastly": {
            "BACKEND": "django_tiercache.purgers.fastly.FastlyPurger",
            "SERVICE_ID": "bench",
            "API_TOKEN": "bench-token",
            "API_URL": os.environ.get("TIERCACHE_BENCH_STUB_URL", "http://127.0.0.1:9"),
        }
    },
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
