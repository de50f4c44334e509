from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches

from django_tiercache import stats
from django_tiercache.edge.purgers import locmem
from tests.redis_server import RedisServer, django_redis, private_redis, use_cache

_RUN = f"tct{os.getpid()}"
_counter = itertools.count()

LOCMEM_PURGERS = {"edge": {"BACKEND": "django_tiercache.purgers.locmem.LocMemPurger"}}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``postgres`` need the test process on PostgreSQL. Under SQLite they are left
    to tests/test_on_postgres.py (when it is collected too), which runs them in a pytest of its
    own on a private server; on PostgreSQL that runner is the one left out."""
    on_postgres = os.environ.get("TIERCACHE_TEST_DATABASE", "sqlite") == "postgres"
    runners = [item for item in items if item.get_closest_marker("postgres_runner")]
    if on_postgres:
        left = runners
    elif runners:
        left = [item for item in items if item.get_closest_marker("postgres")]
    else:
        left = []
    if left:
        items[:] = [item for item in items if item not in left]
        config.hook.pytest_deselected(items=left)


@pytest.fixture(autouse=True)
def _isolated_tiercache(settings: Any) -> Iterator[None]:
    """A key prefix of its own per test, so tests never see each other's entries in a real Redis;
    counters from zero."""
    settings.TIERCACHE = {**settings.TIERCACHE, "KEY_PREFIX": f"{_RUN}-{next(_counter)}"}
    stats.reset()
    locmem.reset()
    yield
    locmem.reset()


@pytest.fixture(scope="session", autouse=True)
def _remove_test_keys() -> Iterator[None]:
    yield
    cache: Any = caches["default"]
    if hasattr(cache, "delete_pattern"):
        cache.delete_pattern(f"{_RUN}-*")


@pytest.fixture
def purgers(settings: Any) -> list[locmem.PurgeCall]:
    """A locmem purger configured; returns its list of calls."""
    settings.TIERCACHE = {**settings.TIERCACHE, "PURGERS": LOCMEM_PURGERS}
    return locmem.calls


@pytest.fixture
def plain_redis(settings: Any) -> Iterator[RedisServer]:
    """The query tier on a private ``redis-server`` of its own (django-redis, socket timeouts)."""
    with private_redis() as server:
        use_cache(settings, django_redis(server.url))
        yield server
        caches["query"].close()


@pytest.fixture(autouse=True)
def _invalidation_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TIERCACHE_TEST_BREAK_INVALIDATION=1`` turns query-tier invalidation into a no-op: the
    freshness tests must then fail (that is how to prove they can)."""
    if os.environ.get("TIERCACHE_TEST_BREAK_INVALIDATION"):
        from django_tiercache.query import QueryResults

        monkeypatch.setattr(QueryResults, "invalidate", lambda self, keys: None)
