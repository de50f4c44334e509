"""System checks report bad settings at start-up with stable ids and hints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, current_app
from django.core import checks
from django.test import override_settings

from django_tiercache.conf import tiercache_settings

LOCMEM = "django_tiercache.purgers.locmem.LocMemPurger"

CLUSTER = "django_tiercache.query.cluster.RedisClusterCache"
CLUSTER_TIMEOUTS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
NODES = ["redis://127.0.0.1:1", "rediss://user:secret@127.0.0.1:2/0"]

# Django's own model checks may ask the database what it supports (JSONField on SQLite).
pytestmark = pytest.mark.django_db


def ids(**tiercache: Any) -> list[str]:
    with override_settings(TIERCACHE=tiercache):
        return sorted(m.id for m in checks.run_checks() if m.id and m.id.startswith("tiercache"))


def messages(**tiercache: Any) -> list[checks.CheckMessage]:
    with override_settings(TIERCACHE=tiercache):
        return [m for m in checks.run_checks() if m.id and m.id.startswith("tiercache")]


def test_defaults_pass() -> None:
    assert ids() == []


def test_unknown_key_has_a_hint() -> None:
    (msg,) = messages(TIMEOUTS=3)
    assert msg.id == "tiercache.E001"
    assert "TIMEOUT" in (msg.hint or "")


def test_unknown_http_key() -> None:
    assert ids(HTTP={"EDGE_MAXAGE": 3}) == ["tiercache.E001"]


@pytest.mark.parametrize(
    "tiercache",
    [
        {"FAIL_OPEN": "yes"},
        {"PURGERS": []},
        {"KEY_PREFIX": "has space"},
        {"STALE_TIMEOUT": -1},
        {"HTTP": {"MAX_KEY_HEADER_BYTES": 10}},
        {"HTTP": {"KEY_HEADERS": ["X-Key"]}},
        {"HTTP": {"CACHEABLE_STATUSES": [200, "404"]}},
        {"READ_REPLICAS": "replica"},
        {"REPLICA_WAIT": float("inf")},
    ],
)
def test_wrong_types(tiercache: dict[str, Any]) -> None:
    assert ids(**tiercache) == ["tiercache.E002"]


def test_setting_that_is_not_a_dict() -> None:
    with override_settings(TIERCACHE=["nope"]):
        assert [m.id for m in checks.run_checks() if m.id and m.id.startswith("tiercache")] == [
            "tiercache.E002"
        ]


def test_unknown_cache_alias() -> None:
    (msg,) = messages(CACHE_ALIAS="nope")
    assert msg.id == "tiercache.E003"
    assert "'default'" in (msg.hint or "")


@pytest.mark.parametrize("timeout", [None, float("inf"), float("nan"), 0, -5, "300", 10**6])
def test_timeout_must_be_finite(timeout: Any) -> None:
    assert ids(TIMEOUT=timeout) == ["tiercache.E006"]


@pytest.mark.parametrize(
    "config",
    [
        {"BACKEND": "no.such.Purger"},
        {"BACKEND": "django_tiercache.conf.TierCacheSettings"},
        {},
        "django_tiercache.purgers.locmem.LocMemPurger",
    ],
)
def test_bad_purger_backend(config: Any) -> None:
    (msg,) = messages(PURGE_ASYNC=False, PURGERS={"edge": config})
    assert msg.id == "tiercache.E004"
    assert "'edge'" in msg.msg


def test_missing_purger_option_names_the_purger(monkeypatch: Any) -> None:
    from django_tiercache.edge.purgers.locmem import LocMemPurger

    monkeypatch.setattr(LocMemPurger, "required_options", ("SERVICE_ID", "API_TOKEN"))
    (msg,) = messages(PURGE_ASYNC=False, PURGERS={"cdn": {"BACKEND": LOCMEM, "SERVICE_ID": "s"}})
    assert msg.id == "tiercache.E005"
    assert "'cdn'" in msg.msg
    assert "API_TOKEN" in msg.msg


def test_purger_errors_never_show_secrets(monkeypatch: Any) -> None:
    from django_tiercache.edge.purgers.locmem import LocMemPurger

    monkeypatch.setattr(LocMemPurger, "required_options", ("SERVICE_ID",))
    (msg,) = messages(
        PURGE_ASYNC=False, PURGERS={"cdn": {"BACKEND": LOCMEM, "API_TOKEN": "s3cr3t"}}
    )
    assert "s3cr3t" not in f"{msg.msg} {msg.hint}"


def test_dispatcher_must_import() -> None:
    assert ids(DISPATCHER="no.such.dispatch") == ["tiercache.E007"]


def test_read_replicas_must_be_database_aliases() -> None:
    assert ids(READ_REPLICAS=["default"], REPLICA_WAIT=0.5) == []
    (msg,) = messages(READ_REPLICAS=["replica"])
    assert msg.id == "tiercache.E011"
    assert "'replica'" in msg.msg
    assert "'default'" in (msg.hint or "")


def test_non_redis_cache_warns_in_production() -> None:
    locmem = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(CACHES=locmem, DEBUG=False):
        assert ids() == ["tiercache.W001"]
    with override_settings(CACHES=locmem, DEBUG=True):
        assert ids() == []


@pytest.fixture
def celery_app() -> Iterator[Celery]:
    """A fresh, unconfigured Celery app as the current one."""
    previous = current_app._get_current_object()
    app = Celery("unconfigured", set_as_current=True)
    yield app
    previous.set_current()


def test_async_purges_without_celery_say_they_are_synchronous(celery_app: Celery) -> None:
    edge = {"edge": {"BACKEND": LOCMEM}}
    assert ids(PURGE_ASYNC=True, PURGERS=edge) == ["tiercache.I001"]
    assert ids(PURGE_ASYNC=False, PURGERS=edge) == []
    celery_app.conf.broker_url = "amqp://guest:guest@127.0.0.1:5672//"
    assert ids(PURGE_ASYNC=True, PURGERS=edge) == []


def test_settings_are_reloaded_on_change() -> None:
    assert tiercache_settings.TIMEOUT == 300
    with override_settings(TIERCACHE={"TIMEOUT": 5, "HTTP": {"EDGE_MAX_AGE": 10}}):
        assert tiercache_settings.TIMEOUT == 5
        assert tiercache_settings.HTTP["EDGE_MAX_AGE"] == 10
        assert tiercache_settings.HTTP["STALE_IF_ERROR"] == 86400  # default kept
    assert tiercache_settings.TIMEOUT == 300


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="Unknown TIERCACHE setting"):
        tiercache_settings.TIMEOUTS  # noqa: B018


def test_ignored_cache_exceptions_warn() -> None:
    from django.conf import settings

    default = settings.CACHES["default"]
    options = {**default["OPTIONS"], "IGNORE_EXCEPTIONS": True}
    caches = {"default": {**default, "OPTIONS": options}}
    with override_settings(CACHES=caches):
        assert ids() == ["tiercache.W003"]


def test_middleware_must_come_first() -> None:
    from django.conf import settings

    later = [*settings.MIDDLEWARE[1:], settings.MIDDLEWARE[0]]
    with override_settings(MIDDLEWARE=later):
        assert ids() == ["tiercache.W004"]


def _query_cache(**config: Any) -> dict[str, Any]:
    return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, "q": config}


def test_a_sharded_query_cache_is_refused() -> None:
    shards = _query_cache(
        BACKEND="django_redis.cache.RedisCache",
        LOCATION=["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0"],
        OPTIONS={
            "CLIENT_CLASS": "django_redis.client.ShardClient",
            "SOCKET_CONNECT_TIMEOUT": 0.5,
            "SOCKET_TIMEOUT": 0.5,
        },
    )
    with override_settings(CACHES=shards):
        (msg,) = messages(CACHE_ALIAS="q")
    assert msg.id == "tiercache.E009"
    assert "ShardClient" in msg.msg
    assert "SentinelClient" in (msg.hint or "")


@pytest.mark.parametrize(
    ("backend", "timeouts"),
    [
        ("django_redis.cache.RedisCache", {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5}),
        (
            "django.core.cache.backends.redis.RedisCache",
            {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        ),
        (CLUSTER, {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}),
    ],
)
def test_a_query_cache_without_timeouts_is_warned_about(
    backend: str, timeouts: dict[str, float]
) -> None:
    location = "redis://127.0.0.1:1/0"
    with override_settings(CACHES=_query_cache(BACKEND=backend, LOCATION=location)):
        (msg,) = messages(CACHE_ALIAS="q")
    assert msg.id == "tiercache.W006"
    assert all(name in (msg.hint or "") for name in timeouts)
    timed = _query_cache(BACKEND=backend, LOCATION=location, OPTIONS=timeouts)
    with override_settings(CACHES=timed):
        assert ids(CACHE_ALIAS="q") == []


def test_a_redis_cluster_cache_is_accepted_without_connecting() -> None:
    config = _query_cache(BACKEND=CLUSTER, LOCATION=NODES, OPTIONS=CLUSTER_TIMEOUTS)
    with override_settings(CACHES=config):  # nothing listens on ports 1 and 2
        assert ids(CACHE_ALIAS="q") == []


@pytest.mark.parametrize(
    ("location", "options", "tiercache", "expected"),
    [
        ("", {}, {}, "names no node"),
        (["127.0.0.1:7000"], {}, {}, "not a redis:// or rediss:// URL"),
        (["redis://127.0.0.1:7000/3"], {}, {}, "only database 0"),
        (NODES, {"read_from_replicas": True}, {}, "reads from replicas"),
        (NODES, {"load_balancing_strategy": 1}, {}, "reads from replicas"),
    ],
)
def test_a_redis_cluster_cache_set_up_wrongly_is_refused(
    location: Any, options: dict[str, Any], tiercache: dict[str, Any], expected: str
) -> None:
    options = {**CLUSTER_TIMEOUTS, **options}
    config = _query_cache(BACKEND=CLUSTER, LOCATION=location, OPTIONS=options)
    with override_settings(CACHES=config):
        (msg,) = messages(CACHE_ALIAS="q", **tiercache)
    assert msg.id == "tiercache.E012"
    assert expected in msg.msg
    assert msg.hint


@pytest.mark.parametrize("name", ["TIER_CACHE", "TIERCACHES", "TIERCAHCE", "TIER_CACHE_SETTINGS"])
def test_a_misspelled_setting_name_is_reported(settings: Any, name: str) -> None:
    setattr(settings, name, {"TIMEOUT": 60})
    from django_tiercache.checks import check_setting_name

    found = [m for m in check_setting_name() if m.id == "tiercache.W007"]
    if name == "TIER_CACHE_SETTINGS":
        assert found == []  # too far from TIERCACHE to be a typo of it
    else:
        assert [m.msg.split(" ")[0] for m in found] == [f"settings.{name}"]


@pytest.mark.parametrize(
    ("path", "problem"),
    [("tests.nowhere.warm", "cannot be imported"), ("django_tiercache.conf.DEFAULTS", "callable")],
)
def test_warmers_that_cannot_run_are_reported(settings: Any, path: str, problem: str) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "WARMERS": [path]}
    from django_tiercache.checks import check_warmers

    (message,) = check_warmers()
    assert message.id == "tiercache.E010"
    assert problem in message.msg


def test_origin_cache_without_the_middleware_is_reported(settings: Any) -> None:
    from django_tiercache.http.checks import check_origin_cache_needs_the_middleware

    assert check_origin_cache_needs_the_middleware() == []  # the test settings have it
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.endswith(".TierCacheMiddleware")]
    (warning,) = check_origin_cache_needs_the_middleware()
    assert warning.id == "tiercache.W008"
    assert "origin_cache is used" in warning.msg
