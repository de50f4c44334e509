"""Test settings with a primary and a streaming replica behind a router (tests/test_replicas.py).

Reads come from "replica", writes go to "default", as the usual Django primary/replica router does.
The servers are the ones tests/pg_cluster.py started (``TIERCACHE_TEST_PRIMARY_PORT`` /
``TIERCACHE_TEST_REPLICA_PORT``); the query tier uses ``TIERCACHE_TEST_REDIS_URL``, shared by
every process of a test. ``TIERCACHE_TEST_REPLICA_SAFETY=off`` turns the replica-lag safety off
(``READ_REPLICAS = []``), to show what it prevents; ``TIERCACHE_TEST_REPLICA_EDGE=on`` adds a
purger that looks at the replica when it is called (tests/replica_probe.py);
``TIERCACHE_TEST_VARNISH_URL`` purges that Varnish and serves tests/edge_urls.py.
"""

from __future__ import annotations

import os
from typing import Any

from tests.settings import *  # noqa: F403
from tests.settings import TIERCACHE as BASE_TIERCACHE


def _server(port_variable: str) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "postgres",
        "HOST": "127.0.0.1",
        "PORT": os.environ[port_variable],
        "USER": "postgres",
        "CONN_MAX_AGE": None,
    }


DATABASES = {
    "default": _server("TIERCACHE_TEST_PRIMARY_PORT"),
    "replica": _server("TIERCACHE_TEST_REPLICA_PORT"),
}
DATABASE_ROUTERS = ["tests.replica_router.PrimaryReplicaRouter"]

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ["TIERCACHE_TEST_REDIS_URL"],
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }
}

TIERCACHE = {
    **BASE_TIERCACHE,
    "KEY_PREFIX": os.environ.get("TIERCACHE_TEST_KEY_PREFIX", "tc-replica"),
}
if os.environ.get("TIERCACHE_TEST_REPLICA_EDGE") == "on":
    TIERCACHE["PURGERS"] = {"probe": {"BACKEND": "tests.replica_probe.ReplicaProbePurger"}}
if os.environ.get("TIERCACHE_TEST_VARNISH_URL"):
    from tests.varnish_support import TOKEN

    ROOT_URLCONF = "tests.edge_urls"
    ALLOWED_HOSTS = ["127.0.0.1"]
    TIERCACHE["PURGERS"] = {
        "varnish": {
            "BACKEND": "django_tiercache.purgers.varnish.VarnishPurger",
            "URLS": [os.environ["TIERCACHE_TEST_VARNISH_URL"]],
            "TOKEN": TOKEN,
        }
    }
if os.environ.get("TIERCACHE_TEST_REPLICA_SAFETY") == "off":
    TIERCACHE["READ_REPLICAS"] = []
