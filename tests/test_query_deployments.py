"""The query tier on the Redis deployments users run, each against real ``redis-server`` processes
started on free ports: a hit on the second read, and no stale read over 100 write/read cycles.
Then the faults: a failover, a replica cut from its primary, a stalled Redis (circuit breaker),
a full Redis (OOM on the version write) and a failure another process never saw.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from redis.exceptions import OutOfMemoryError, RedisError

from django_tiercache import stats
from django_tiercache.models import PurgeRequest
from django_tiercache.query import QueryResults, query_results
from tests.redis_server import (
    RedisServer,
    SentinelSet,
    django_redis,
    free_port,
    primary_with_replica,
    private_redis,
    sentinel_set,
    use_cache,
    wait_until,
)
from tests.testapp.models import Category, Product

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pen() -> Product:
    return Product.objects.create(name="pen", price=Decimal(1), category=Category.objects.create())


def price(pk: int) -> Decimal:
    return Product.objects.cached().get(pk=pk).price


def assert_hit_on_second_read(pen: Product) -> None:
    first = price(pen.pk)
    with CaptureQueriesContext(connection) as queries:
        assert price(pen.pk) == first
    assert len(queries) == 0, "the second read was not served from the cache"


def stale_reads(pen: Product, cycles: int, start: int = 0) -> int:
    """Write a new price, read it twice (a miss, then a hit): the reads that were not it."""
    stale = 0
    for cycle in range(start, start + cycles):
        Product.objects.filter(pk=pen.pk).update(price=Decimal(cycle))
        stale += sum(price(pen.pk) != Decimal(cycle) for _ in range(2))
    return stale


@pytest.mark.parametrize("client", ["DefaultClient", "HerdClient"])
def test_django_redis_client(
    pen: Product, plain_redis: RedisServer, settings: Any, client: str
) -> None:
    options = {"CLIENT_CLASS": f"django_redis.client.{client}"}
    use_cache(settings, django_redis(plain_redis.url, **options))
    assert_hit_on_second_read(pen)
    assert stale_reads(pen, 100) == 0
    assert stats.get("query_hits") >= 100


@contextlib.contextmanager
def replica_cut_from_its_primary(settings: Any, backend: str) -> Iterator[None]:
    """The query tier on a primary and a replica (``LOCATION`` a list: the cache reads the
    replica) that stopped replicating and still answers, with old data."""
    with primary_with_replica() as (primary, replica):
        servers = [primary.url, replica.url]
        if backend == "django":
            options = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
            path = "django.core.cache.backends.redis.RedisCache"
            use_cache(settings, {"BACKEND": path, "LOCATION": servers, "OPTIONS": options})
        else:
            use_cache(settings, django_redis(servers))
        replica.client().execute_command("REPLICAOF", "127.0.0.1", "1")  # its primary is gone
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "down")
        yield
        caches["query"].close()


@pytest.mark.parametrize("backend", ["django_redis", "django"])
def test_primary_with_a_replica_cut_from_it(pen: Product, settings: Any, backend: str) -> None:
    """Version tokens and locks come from the primary: a replica that stopped replicating
    never makes an invalidated entry current again."""
    with replica_cut_from_its_primary(settings, backend):
        assert_hit_on_second_read(pen)
        assert stale_reads(pen, 100) == 0
        assert stats.get("query_hits") >= 100


@pytest.mark.parametrize("backend", ["django_redis", "django"])
def test_versions_are_read_from_the_primary(pen: Product, settings: Any, backend: str) -> None:
    """``QueryResults.versions()`` answers as the tier reads: an invalidation shows at once."""
    key = f"testapp.product:{pen.pk}"
    with replica_cut_from_its_primary(settings, backend):
        before = query_results.versions([key])[key]
        Product.objects.filter(pk=pen.pk).update(price=Decimal(2))
        assert query_results.versions([key])[key] not in (None, before)


@pytest.fixture
def sentinel(settings: Any) -> Iterator[SentinelSet]:
    """django-redis' documented Sentinel recipe."""
    with sentinel_set() as found:
        sentinel_options = {
            "CLIENT_CLASS": "django_redis.client.SentinelClient",
            "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
            "SENTINELS": found.sentinels,
        }
        use_cache(settings, django_redis(found.url, **sentinel_options))
        yield found
        caches["query"].close()


def test_sentinel_with_a_failover(pen: Product, sentinel: SentinelSet) -> None:
    assert_hit_on_second_read(pen)
    assert stale_reads(pen, 50) == 0
    sentinel.failover()
    assert stale_reads(pen, 50, start=50) == 0
    assert_hit_on_second_read(pen)
    assert sentinel.master.client().dbsize() > 0  # the new master holds the entries


def test_a_stalled_redis_costs_one_timeout_per_retry_interval(
    pen: Product, plain_redis: RedisServer, settings: Any
) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "RETRY_INTERVAL": 60}
    assert_hit_on_second_read(pen)
    plain_redis.pause(3)
    for _ in range(20):
        assert price(pen.pk) == Decimal(1)  # from the database
    assert stats.get("query_errors") == 1  # one timeout; the other reads left Redis alone


def test_a_full_redis_counts_as_a_failed_invalidation(
    pen: Product, plain_redis: RedisServer
) -> None:
    """OOM on the version write: nothing is served until the invalidation went through."""
    assert_hit_on_second_read(pen)
    redis = plain_redis.client()
    used = int(redis.info("memory")["used_memory"])
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", used + 64 * 1024)
    with contextlib.suppress(OutOfMemoryError):
        redis.set("filler", b"x" * 128 * 1024)  # accepted once, then Redis is full
    with pytest.raises(OutOfMemoryError):
        redis.set("more", b"x")
    Product.objects.filter(pk=pen.pk).update(price=Decimal(2))  # the invalidation fails
    for _ in range(5):
        assert price(pen.pk) == Decimal(2)
    redis.config_set("maxmemory", 0)
    assert price(pen.pk) == Decimal(2)  # replays the invalidation, then reads
    assert_hit_on_second_read(pen)


def test_a_process_that_never_saw_the_failure_learns_of_it(
    pen: Product, plain_redis: RedisServer, settings: Any, monkeypatch: Any
) -> None:
    """Another process's failed invalidation is in the outbox: this one replays it before it
    serves anything, within RECOVERY_POLL seconds (0 here: at its next read)."""
    other = QueryResults()  # a second process's service: same cache, its own state
    keys = [f"testapp.product:{pen.pk}"]

    def read() -> Any:
        return other.get_or_set("pen", lambda: Product.objects.get(pk=pen.pk).price, keys=keys)

    assert read() == Decimal(1)
    assert read() == Decimal(1)  # cached
    with monkeypatch.context() as failing:
        failing.setattr(query_results.transport, "invalidate", _unreachable)
        Product.objects.filter(pk=pen.pk).update(price=Decimal(2))
    settings.TIERCACHE = {**settings.TIERCACHE, "RECOVERY_POLL": 0}
    assert read() == Decimal(2)
    assert read() == Decimal(2)


def _unreachable(*args: Any, **kwargs: Any) -> None:
    raise ConnectionError("redis unreachable")


def wait_for_one_replica(settings: Any, primary: RedisServer) -> None:
    """The query tier on ``primary`` with ``WAIT_FOR_REPLICAS=1``."""
    use_cache(
        settings,
        django_redis(primary.url, SOCKET_TIMEOUT=2),
        WAIT_FOR_REPLICAS=1,
        WAIT_TIMEOUT=1,  # a busy machine: below the socket timeout, above any ack delay
    )


def test_an_invalidation_no_replica_confirmed_counts_as_failed(pen: Product, settings: Any) -> None:
    """WAIT_FOR_REPLICAS: a primary whose replica is gone (as after a failover that left it
    behind) acknowledges a write it may lose; the tier treats it as failed and replays it."""
    with primary_with_replica() as (primary, replica):
        wait_for_one_replica(settings, primary)
        assert_hit_on_second_read(pen)
        assert stale_reads(pen, 5) == 0
        replica.client().execute_command("REPLICAOF", "NO", "ONE")
        Product.objects.filter(pk=pen.pk).update(price=Decimal(7))  # unconfirmed: failed
        assert PurgeRequest.objects.filter(results__query__ok=False).count() == 1
        assert price(pen.pk) == Decimal(7)  # from the database
        replica.client().execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up")
        assert price(pen.pk) == Decimal(7)  # replayed, confirmed, then read
        assert not PurgeRequest.objects.filter(results__query__ok=False).exists()
        assert_hit_on_second_read(pen)
        caches["query"].close()


def test_wait_for_replicas_confirms_the_invalidation_s_own_connection(
    pen: Product, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``WAIT`` counts the writes of the connection it runs on: sent on its own, it could run on
    another pooled connection and confirm that one's older writes instead of this invalidation.
    It must go out in the invalidation's pipeline, never as a separate ``client.wait()``."""
    with primary_with_replica() as (primary, _replica):
        wait_for_one_replica(settings, primary)
        assert_hit_on_second_read(pen)
        client = query_results.transport.client  # type: ignore[attr-defined]
        monkeypatch.setattr(client, "wait", _unreachable)  # a WAIT of its own would fail
        Product.objects.filter(pk=pen.pk).update(price=Decimal(9))
        assert not PurgeRequest.objects.filter(results__query__ok=False).exists()
        assert price(pen.pk) == Decimal(9)
        caches["query"].close()


def test_an_acl_user_over_tls(pen: Product, settings: Any, tmp_path: Any) -> None:
    """``rediss://`` with an ACL user (the default user disabled): the tier uses the cache's own
    client, so it authenticates and encrypts as the cache does."""
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a certificate for the TLS server")
    subject = ("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    new_pair = ("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject)
    files = ("-keyout", str(key), "-out", str(cert))
    subprocess.run([openssl, *new_pair, *files], check=True, capture_output=True)
    tls_port = free_port()
    tls = ("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    users = (
        *["--user", "default", "on", "nopass", "+@connection"],
        *["--user", "tc", "on", ">tc-secret", "~*", "&*", "+@all"],
    )
    with private_redis(*tls, "--tls-auth-clients", "no", *users) as server:
        location = f"rediss://tc:tc-secret@127.0.0.1:{tls_port}/0"
        pool = {"ssl_ca_certs": str(cert)}
        use_cache(settings, django_redis(location, CONNECTION_POOL_KWARGS=pool))
        assert_hit_on_second_read(pen)
        assert stale_reads(pen, 100) == 0
        assert stats.get("query_errors") == 0
        assert server.client(username="tc", password="tc-secret").dbsize() > 0
        caches["query"].close()


def test_redis_restarted_under_load_leaves_no_lock_behind(
    pen: Product, plain_redis: RedisServer, settings: Any
) -> None:
    """Readers keep reading while Redis is killed and started again: none of them sees an
    error, and once every reader is done no single-flight lock is left (an orphaned lock would
    make every miss wait SINGLE_FLIGHT_WAIT for 30 seconds)."""
    settings.TIERCACHE = {**settings.TIERCACHE, "RETRY_INTERVAL": 0.1}
    assert_hit_on_second_read(pen)
    stop, errors = threading.Event(), []

    def reader() -> None:
        try:
            while not stop.is_set():
                with contextlib.suppress(OSError, RedisError):  # raises while Redis is down
                    query_results.invalidate([f"testapp.product:{pen.pk}"])  # misses: locks
                assert price(pen.pk) == Decimal(1)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    plain_redis.stop()
    time.sleep(0.5)
    plain_redis.start()  # same port, empty
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert plain_redis.client().keys(f"*{query_results.lock_key('')}*") == []
    assert_hit_on_second_read(pen)


@pytest.mark.parametrize("backend", ["django_redis", "django"])
def test_invalidate_all_drops_the_tier_s_keys_only(
    pen: Product, plain_redis: RedisServer, settings: Any, backend: str
) -> None:
    if backend == "django":
        options = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
        path = "django.core.cache.backends.redis.RedisCache"
        use_cache(settings, {"BACKEND": path, "LOCATION": plain_redis.url, "OPTIONS": options})
    caches["query"].set("session:1", "kept")
    assert_hit_on_second_read(pen)
    query_results.invalidate_all()
    assert caches["query"].get("session:1") == "kept"
    with CaptureQueriesContext(connection) as queries:
        price(pen.pk)
    assert len(queries) == 1  # the entry is gone


def test_django_redis_cache_options_shape_the_tier_s_own_pool(
    pen: Product, plain_redis: RedisServer, settings: Any
) -> None:
    """Django's RedisCache has no documented client: the tier's own pool follows its documented
    OPTIONS, so ``pool_class`` with ``max_connections`` bounds the tier's connections too."""
    options = {
        **{"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        **{"pool_class": "redis.BlockingConnectionPool", "max_connections": 2, "timeout": 10},
    }
    path = "django.core.cache.backends.redis.RedisCache"
    use_cache(settings, {"BACKEND": path, "LOCATION": plain_redis.url, "OPTIONS": options})
    assert_hit_on_second_read(pen)
    prices: list[Decimal] = []

    def reader() -> None:
        try:
            prices.extend(price(pen.pk) for _ in range(20))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert prices == [Decimal(1)] * 160
    assert stats.get("query_errors") == 0
    assert len(plain_redis.client().client_list()) <= 3  # the tier's 2 and this one
