"""A one-view Django site served by uvicorn in ``test_query_asgi`` (its own process).

The view reads through the query tier; the cache is django-redis on the Redis named by
``TIERCACHE_ASGI_REDIS_URL``, with a pool of at most ``TIERCACHE_ASGI_POOL`` connections.
"""

from __future__ import annotations

import os

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="tiercache-asgi-test",
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.contenttypes", "django_tiercache"],
    MIDDLEWARE=[],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CACHES={
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": os.environ.get("TIERCACHE_ASGI_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
                # Requests beyond the pool wait for a connection instead of failing.
                "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
                "CONNECTION_POOL_KWARGS": {
                    "timeout": 2,
                    "max_connections": int(os.environ.get("TIERCACHE_ASGI_POOL", "10")),
                },
            },
        }
    },
    # Nothing fails here: no outbox to look at (this site has no tables).
    TIERCACHE={"RECOVERY_POLL": None},
)

import django  # noqa: E402

django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

from django_tiercache import stats  # noqa: E402
from django_tiercache.query import query_results  # noqa: E402


def item(request: HttpRequest, number: int) -> JsonResponse:
    name = f"item:{number % 50}"
    value = query_results.get_or_set(name, lambda: number % 50, keys=[name])
    return JsonResponse({"value": value, "hits": stats.get("query_hits")})


urlpatterns = [path("item/<int:number>", item)]
application = get_asgi_application()
