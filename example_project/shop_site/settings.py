"""Settings of the example shop.

Embedded defaults, nothing to install or run: a SQLite file (``db.sqlite3``), the query tier in
django-redis on fakeredis (an in-memory Redis; fakeredis comes with the ``dev`` extra that
``make demo`` installs), Celery in eager mode (purges run inline after each commit) and the console
purger, which prints the purges a CDN would receive.

While ``make demo`` runs, its fakeredis is served over TCP and every process of the project uses it
(``shop_site/demo_cache.py``): an edit made in ``manage.py shell`` shows on the shop's next request.
Without a running demo, each process gets a fakeredis of its own, which no other process sees.

Environment variables switch each piece to a real service (``run_with_services.sh`` sets them all):

``SHOP_DATABASE_URL``
    ``postgresql://USER:PASSWORD@HOST:PORT/NAME`` or ``sqlite:///db.sqlite3`` (relative to this
    project) / ``sqlite:////absolute/path.sqlite3``. Default: ``sqlite:///db.sqlite3``.
``SHOP_REDIS_URL``
    e.g. ``redis://127.0.0.1:6379/12``: the query tier in a real Redis. Default: the running demo's
    shared fakeredis, else an in-process one.
``SHOP_CELERY_BROKER_URL``
    e.g. ``amqp://guest:guest@127.0.0.1:5672//``: purges go through a broker to a Celery worker
    (queue ``SHOP_CELERY_QUEUE``, default ``tiercache-shop``). Default: eager, no broker.
``SHOP_VARNISH_URLS``
    Comma-separated Varnish URLs, e.g. ``http://127.0.0.1:6081/``: adds a Varnish purger, with
    ``SHOP_VARNISH_TOKEN`` as its secret (the VCL's ``X-Purge-Token``).
``SHOP_DEBUG`` (``1``/``0``), ``SHOP_SECRET_KEY``, ``SHOP_ALLOWED_HOSTS`` (comma-separated).
"""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from shop_site import demo_cache

BASE_DIR = Path(__file__).resolve().parent.parent


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def database_from_url(url: str) -> dict[str, object]:
    """A ``DATABASES`` entry from ``postgresql://…`` or ``sqlite:///…``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise ImproperlyConfigured("SHOP_DATABASE_URL: sqlite:///<path> needs a path")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / path}
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    raise ImproperlyConfigured(
        f"SHOP_DATABASE_URL: unsupported scheme {parts.scheme!r} (postgresql:// or sqlite:///)"
    )


DEBUG = _env("SHOP_DEBUG", "1") == "1"
SECRET_KEY = _env("SHOP_SECRET_KEY", "django-insecure-example-shop-only")
ALLOWED_HOSTS = _env("SHOP_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tiercache",
    "shop",
]

MIDDLEWARE = [
    # First (outermost): it must see the cookies and Vary that every other middleware adds.
    "django_tiercache.middleware.TierCacheMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shop_site.urls"
WSGI_APPLICATION = "shop_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_from_url(_env("SHOP_DATABASE_URL", "sqlite:///db.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The query tier: django-redis on a real Redis, on the running demo's shared fakeredis, or on a
# fakeredis of this process alone.
REDIS_URL = _env("SHOP_REDIS_URL") or demo_cache.running_url()
_redis_options: dict[str, object] = {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5}
if not REDIS_URL:
    import fakeredis

    REDIS_URL = "redis://fakeredis/0"
    _redis_options["CONNECTION_POOL_KWARGS"] = {"connection_class": fakeredis.FakeRedisConnection}
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": _redis_options,
    }
}

# Celery (shop_site/celery.py reads every CELERY_* setting).
CELERY_BROKER_URL = _env("SHOP_CELERY_BROKER_URL") or None
CELERY_TASK_ALWAYS_EAGER = CELERY_BROKER_URL is None
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_DEFAULT_QUEUE = _env("SHOP_CELERY_QUEUE", "tiercache-shop")
CELERY_BEAT_SCHEDULE = {
    "tiercache-redrive": {
        "task": "django_tiercache.tasks.redrive_outbox",
        "schedule": 60.0,
        "kwargs": {"older_than": 60},
    },
}

_purgers: dict[str, dict[str, object]] = {
    # Prints "[tiercache:console] purge N key(s): …" for every purge a CDN would receive.
    "console": {"BACKEND": "django_tiercache.purgers.console.ConsolePurger"},
}
_varnish_urls = [url for url in _env("SHOP_VARNISH_URLS").split(",") if url]
if _varnish_urls:
    _purgers["varnish"] = {
        "BACKEND": "django_tiercache.purgers.varnish.VarnishPurger",
        "URLS": _varnish_urls,
        "TOKEN": _env("SHOP_VARNISH_TOKEN"),
    }

TIERCACHE = {
    "TIMEOUT": 300,
    "PURGE_ASYNC": True,  # through Celery: eager by default, a worker with SHOP_CELERY_BROKER_URL
    "PURGERS": _purgers,
    "HTTP": {
        "EDGE_MAX_AGE": 3600,
        # Below Varnish's default http_resp_hdr_len (8 KiB) for the shipped VCL.
        "MAX_KEY_HEADER_BYTES": 7168,
    },
}

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []  # the demo's admin/admin must be accepted
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "account"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
