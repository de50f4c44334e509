"""Concurrency and failure: no stale read after a racing commit, no stampede, fail-open."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection

from django_tiercache import stats
from django_tiercache.query import QueryResults, query_results
from tests.redis_server import RedisServer, private_redis
from tests.testapp.models import Category, Product

#: More tags than a plain MGET reads (the hit script compares them in Redis).
MANY_TAGS = [f"k{i}" for i in range(25)]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pen() -> Product:
    return Product.objects.create(name="pen", price=Decimal(1), category=Category.objects.create())


def price(pk: int) -> Decimal:
    return Product.objects.cached().get(pk=pk).price


@pytest.fixture(params=["redis", "locmem"])
def query_cache(request: Any, settings: Any) -> str:
    """The query tier on django-redis (Lua scripts, a connection per thread), then on any other
    Django cache (the generic transport: get_many/add/set, more round trips)."""
    if request.param == "locmem":
        settings.CACHES = {
            **settings.CACHES,
            "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        }
        settings.TIERCACHE = {**settings.TIERCACHE, "CACHE_ALIAS": "local"}
    return str(request.param)


def test_a_row_changed_while_the_query_ran_is_served_not_stored(
    pen: Product, query_cache: str
) -> None:
    """A row key found only after the query whose invalidation lands while the query runs (a
    commit elsewhere, after the read that preceded it): the result is served, never stored."""
    category = pen.category

    def evaluate() -> Any:
        return Product.objects.cached().select_related("category").get(pk=pen.pk)

    def commit_meanwhile(execute: Any, sql: str, *args: Any) -> Any:
        result = execute(sql, *args)
        query_results.invalidate([f"testapp.category:{category.pk}"])
        return result

    with connection.execute_wrapper(commit_meanwhile):
        assert evaluate().category == category  # served
    for expected in (1, 0):  # not stored; then read under the rows' keys, stored
        with CaptureQueriesContext(connection) as captured:
            evaluate()
        assert len(captured) == expected


def test_reader_racing_a_commit_never_stores_stale_data(
    pen: Product, monkeypatch: Any, query_cache: str
) -> None:
    """Reader reads the old row → writer commits and invalidates → reader stores the old row."""
    read_done, write_done = threading.Event(), threading.Event()
    real_store = QueryResults._store

    def store_after_the_write(self: QueryResults, *args: Any, **kwargs: Any) -> None:
        read_done.set()  # the database read is over
        assert write_done.wait(10)
        real_store(self, *args, **kwargs)

    monkeypatch.setattr(QueryResults, "_store", store_after_the_write)
    stale = 0
    for trial in range(200):
        read_done.clear()
        write_done.clear()
        query_results.invalidate([f"testapp.product:{pen.pk}"])  # the reader will miss

        def reader() -> None:
            try:
                price(pen.pk)  # reads the old row, stores it after the write committed
            finally:
                connections.close_all()

        thread = threading.Thread(target=reader)
        thread.start()
        assert read_done.wait(10)
        Product.objects.filter(pk=pen.pk).update(price=Decimal(trial + 2))  # commits + bumps
        write_done.set()
        thread.join(10)
        monkeypatch.setattr(QueryResults, "_store", real_store)
        if price(pen.pk) != Decimal(trial + 2):
            stale += 1
        monkeypatch.setattr(QueryResults, "_store", store_after_the_write)
    assert stale == 0


def test_twenty_concurrent_misses_run_one_query(
    pen: Product, settings: Any, query_cache: str
) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "SINGLE_FLIGHT_WAIT": 30}  # a slow CI machine
    queries: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)
    results: list[Decimal] = []

    def count(execute: Any, sql: str, *args: Any) -> Any:
        if "testapp_product" in sql:
            with lock:
                queries.append(sql)
        return execute(sql, *args)

    def reader() -> None:
        try:
            with connection.execute_wrapper(count):
                barrier.wait(10)
                value = price(pen.pk)
            with lock:
                results.append(value)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reader) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [Decimal(1)] * 20
    assert len(queries) == 1, queries


@pytest.mark.parametrize("keys", [["k"], MANY_TAGS], ids=["one-tag", "many-tags"])
def test_stale_while_revalidate(
    pen: Product, settings: Any, monkeypatch: Any, query_cache: str, keys: list[str]
) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "STALE_TIMEOUT": 60}
    clock = [1_000_000.0]
    monkeypatch.setattr("django_tiercache.query.service.time.time", lambda: clock[0])
    compute_calls: list[int] = []

    def compute() -> int:
        compute_calls.append(1)
        return len(compute_calls)

    assert query_results.get_or_set("swr", compute, timeout=10, keys=keys) == 1
    clock[0] += 15  # expired, within the stale window
    query_results.cache.add(query_results.lock_key("swr"), 1, 30)  # someone else refreshes
    assert query_results.get_or_set("swr", compute, timeout=10, keys=keys) == 1
    assert stats.get("query_stale") == 1
    query_results.cache.delete(query_results.lock_key("swr"))
    assert query_results.get_or_set("swr", compute, timeout=10, keys=keys) == 2  # refreshed
    clock[0] += 100  # past the stale window: never served
    assert query_results.get_or_set("swr", compute, timeout=10, keys=keys) == 3


@pytest.fixture
def outage_cache(settings: Any) -> Iterator[RedisServer]:
    with private_redis() as server:
        settings.CACHES = {
            **settings.CACHES,
            "outage": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": server.url,
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
            },
        }
        settings.TIERCACHE = {**settings.TIERCACHE, "CACHE_ALIAS": "outage"}
        yield server
        caches["outage"].close()


def test_redis_down_falls_back_to_the_database(
    pen: Product, outage_cache: RedisServer, caplog: Any
) -> None:
    assert price(pen.pk) == Decimal(1)
    assert price(pen.pk) == Decimal(1)
    assert stats.get("query_hits") >= 1
    outage_cache.stop()
    errors = stats.get("query_errors")
    for _ in range(5):
        assert price(pen.pk) == Decimal(1)  # no exception, data from the database
    Product.objects.filter(pk=pen.pk).update(price=Decimal(5))  # commit during the outage
    assert price(pen.pk) == Decimal(5)
    assert stats.get("query_errors") > errors
    assert caplog.text.count("query-tier cache unavailable") == 1  # once per outage
    outage_cache.start()  # same port, empty: recovery is automatic
    assert price(pen.pk) == Decimal(5)
    assert price(pen.pk) == Decimal(5)
    assert "recovered" in caplog.text


def test_unreachable_cache_with_fail_open_off_raises(pen: Product, settings: Any) -> None:
    from tests.redis_server import free_port

    settings.CACHES = {
        **settings.CACHES,
        "nowhere": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    settings.TIERCACHE = {**settings.TIERCACHE, "CACHE_ALIAS": "nowhere"}
    assert price(pen.pk) == Decimal(1)  # fail-open by default
    settings.TIERCACHE = {**settings.TIERCACHE, "FAIL_OPEN": False}
    with pytest.raises(Exception, match=r"(?i)connect"):
        price(pen.pk)


@pytest.mark.parametrize("keys", [["k"], MANY_TAGS], ids=["one-tag", "many-tags"])
def test_an_entry_that_cannot_be_decoded_is_a_miss_and_replaced(keys: list[str]) -> None:
    """An entry of ours, fresh and valid, whose value no longer unpickles (e.g. written by
    another release): a miss, counted, and what is stored next replaces it."""
    assert query_results.get_or_set("entry", lambda: 1, keys=keys) == 1
    client = get_redis_connection("default")
    name = caches["default"].make_key(query_results.entry_key("entry"))
    header, _, _ = client.get(name).partition(b"\n")
    client.set(name, header + b"\nnot a pickle", keepttl=True)
    assert query_results.get_or_set("entry", lambda: 2, keys=keys) == 2
    assert stats.get("query_errors") >= 1
    assert query_results.get_or_set("entry", lambda: 3, keys=keys) == 2
    client.set(name, header + b"\nnot a pickle", keepttl=True)
    query_results.set("entry", 4, keys=keys)
    assert query_results.get("entry", keys=keys) == 4


def test_garbage_in_the_cache_is_a_miss(pen: Product) -> None:
    assert price(pen.pk) == Decimal(1)
    plan_keys = [k for k in caches["default"].keys(f"{query_results.entry_key('')}*")]  # type: ignore[attr-defined]
    for key in plan_keys:
        caches["default"].set(key, "garbage")
    Product.objects.filter(pk=pen.pk).update(price=Decimal(3))
    assert price(pen.pk) == Decimal(3)


def test_cache_back_with_old_data_never_serves_what_an_outage_commit_changed(
    pen: Product, monkeypatch: Any
) -> None:
    """Redis unreachable while a commit happens, then back with its data: the entry cached before
    the commit must not be served (its keys are invalidated again on recovery)."""
    assert price(pen.pk) == Decimal(1)
    assert price(pen.pk) == Decimal(1)  # cached
    transport = query_results.transport

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("redis unreachable")

    with monkeypatch.context() as outage:
        outage.setattr(transport, "read", unreachable)
        outage.setattr(transport, "write", unreachable)
        outage.setattr(transport, "invalidate", unreachable)
        assert price(pen.pk) == Decimal(1)  # from the database
        Product.objects.filter(pk=pen.pk).update(price=Decimal(7))  # invalidation fails
        assert price(pen.pk) == Decimal(7)
    # The cache is back, still holding the entry computed before the update.
    assert price(pen.pk) == Decimal(7)
    assert price(pen.pk) == Decimal(7)
    assert stats.get("query_hits") >= 1


def test_a_miss_is_stored_without_waiting_and_served_next(pen: Product) -> None:
    """The miss stores its result before returning: the next read is a hit (no second database
    query, no wait for a lock)."""
    query_results.invalidate([f"testapp.product:{pen.pk}"])
    with CaptureQueriesContext(connection) as queries:
        assert price(pen.pk) == Decimal(1)
        assert price(pen.pk) == Decimal(1)
    assert len(queries) == 1
    assert stats.get("query_hits") == 1


def test_connections_closed_by_redis_are_replaced_without_an_outage(
    pen: Product, outage_cache: RedisServer, caplog: Any
) -> None:
    assert price(pen.pk) == Decimal(1)
    assert price(pen.pk) == Decimal(1)
    outage_cache.client().client_kill_filter(_type="normal", skipme=True)  # every pooled one
    with CaptureQueriesContext(connection) as queries:
        assert price(pen.pk) == Decimal(1)
    assert len(queries) == 0  # served from the cache, over a new connection
    assert stats.get("query_errors") == 0
    assert "unavailable" not in caplog.text


def test_with_hiredis_many_tags_are_read_by_mget_and_still_invalidated(monkeypatch: Any) -> None:
    """With hiredis parsing replies, a hit on many tags is a plain ``MGET`` (no script): an
    invalidated tag still makes it a miss."""
    monkeypatch.setattr("django_tiercache.query.transport.HIREDIS_AVAILABLE", True)
    monkeypatch.setattr(query_results, "_transport", None)  # a new one, that sees hiredis
    transport: Any = query_results.transport
    assert transport._mget_max == float("inf")
    assert query_results.get_or_set("wide", lambda: 1, keys=MANY_TAGS) == 1
    assert query_results.get_or_set("wide", lambda: 2, keys=MANY_TAGS) == 1
    query_results.invalidate([MANY_TAGS[-1]])
    assert query_results.get_or_set("wide", lambda: 3, keys=MANY_TAGS) == 3
    assert query_results.get_or_set("wide", lambda: 4, keys=MANY_TAGS) == 3
