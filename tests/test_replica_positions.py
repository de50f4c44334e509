"""The pieces of the replica-lag safety that need no replica (the end-to-end tests with a real
primary and replica are in tests/test_replicas.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache.backends.locmem import LocMemCache

from django_tiercache import invalidate, replicas
from django_tiercache.query import positions, query_results


@pytest.fixture(params=["query-tier cache", "locmem"])
def cache(request: pytest.FixtureRequest) -> Any:
    """The suite's query-tier cache (django-redis: the Lua script) and a plain Django cache."""
    if request.param == "locmem":
        return LocMemCache("tiercache-positions", {})
    return query_results.cache


def test_positions_only_grow(cache: Any) -> None:
    a, b = query_results.position_key("shop.product:1"), query_results.position_key("shop.x")
    assert positions.required(cache, [a, b]) == 0
    positions.record(cache, [a, b], 0x16B374D848, 60)
    positions.record(cache, [a], 0x100, 60)  # an invalidation that arrives late
    assert positions.required(cache, [a]) == 0x16B374D848
    positions.record(cache, [b], 0x16B374D900, 60)
    assert positions.required(cache, [a, b]) == 0x16B374D900
    assert positions.required(cache, []) == 0


def test_lsn_text_to_position() -> None:
    assert replicas.parse_lsn("16/B374D848") == 0x16B374D848
    assert replicas.parse_lsn("0/3000F78") < replicas.parse_lsn("0/3001178")


_PRIMARY = {"ENGINE": "django.db.backends.postgresql", "NAME": "shop", "HOST": "db1", "PORT": ""}
_ALIASES = {
    "default": _PRIMARY,
    "replica": {**_PRIMARY, "HOST": "db2"},  # the same database on another server
    "mirror": {**_PRIMARY, "NAME": "other", "TEST": {"MIRROR": "default"}},
    "reporting": {**_PRIMARY, "NAME": "reports"},  # another database
    "again": {**_PRIMARY},  # the same server and database under a second alias
}


@pytest.mark.parametrize(
    ("configured", "read", "expected"),
    [
        (None, "replica", True),  # by default the aliases that look like replicas may lag
        (None, "mirror", True),
        (None, "reporting", False),
        (None, "again", False),
        (None, "default", False),
        ([], "replica", False),  # the safety turned off
        (["replica"], "replica", True),
        (["replica"], "mirror", False),
        (["reporting"], "reporting", True),
    ],
)
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read, never connected to
def test_which_reads_may_lag(settings: Any, configured: Any, read: str, expected: bool) -> None:
    settings.DATABASES = _ALIASES
    settings.TIERCACHE = {**settings.TIERCACHE, "READ_REPLICAS": configured}
    assert replicas.may_lag(read, "default") is expected


@pytest.mark.django_db
def test_a_single_database_records_no_position() -> None:
    """Without a replica an invalidation costs what it did: no WAL position, no extra key."""
    query_results.invalidate(["shop.product:1"])
    key = query_results.position_key("shop.product:1")
    assert positions.required(query_results.cache, [key]) == 0
    assert replicas.wait_until_applied("default", timeout=5) is True


@pytest.mark.django_db(transaction=True)
def test_a_position_that_cannot_be_recorded_is_a_failed_invalidation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The position goes to Redis before the tokens: when Redis refuses it (down, full), this
    process serves nothing until the invalidation was replayed, as when the tokens fail."""
    query_results.set("home", "old", keys=["shop.home"])
    with monkeypatch.context() as down:
        down.setattr(replicas, "primary_position", lambda using: 0x100)
        down.setattr(positions, "record", _refused)
        invalidate("shop.home")
    assert query_results.get("home", keys=["shop.home"]) is None


def _refused(*args: Any, **kwargs: Any) -> None:
    raise ConnectionError("redis unreachable")
