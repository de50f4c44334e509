"""The query tier on a Redis Cluster of three masters (real ``redis-server`` processes on free
ports, through ``RedisClusterCache``): a hit on the second read, no stale read over 100+
write/read cycles with version tokens on every shard (also with concurrent writers), invalidation
across shards, a master killed and restarted empty (0 errors to callers, nothing stale after
recovery) and a stalled master (one failed read per retry interval).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from django_tiercache import stats
from django_tiercache.models import PurgeRequest
from django_tiercache.query import QueryResults, query_results
from django_tiercache.query.cluster import BACKEND, ClusterTransport
from tests.redis_server import TIMEOUTS, RedisServer, cluster, cluster_ok, use_cache, wait_until
from tests.test_query_deployments import assert_hit_on_second_read, price
from tests.testapp.models import Category, Product

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[RedisServer]]:
    with cluster(3) as found:
        yield found


@pytest.fixture(scope="module")
def replicated() -> Iterator[list[RedisServer]]:
    """Three masters and a replica of each (which is which changes with a failover)."""
    with cluster(3, replicas=1) as found:
        yield found


def _use(nodes: list[RedisServer], settings: Any, wait_for_replicas: int = 0) -> None:
    options = {key.lower(): value for key, value in TIMEOUTS.items()}
    tiercache: dict[str, Any] = {}
    if wait_for_replicas:  # WAIT_TIMEOUT below the socket timeout, above any ack delay
        options["socket_timeout"] = 2
        tiercache = {"WAIT_FOR_REPLICAS": wait_for_replicas, "WAIT_TIMEOUT": 1}
    location = [node.url for node in nodes]
    use_cache(settings, {"BACKEND": BACKEND, "LOCATION": location, "OPTIONS": options}, **tiercache)
    assert isinstance(query_results.transport, ClusterTransport)


@pytest.fixture
def on_cluster(nodes: list[RedisServer], settings: Any) -> Iterator[list[RedisServer]]:
    _use(nodes, settings)
    yield nodes
    caches["query"].close()


@pytest.fixture
def on_replicated(replicated: list[RedisServer], settings: Any) -> Iterator[list[RedisServer]]:
    _use(replicated, settings)
    yield replicated
    caches["query"].close()


def shard_of(nodes: list[RedisServer], tag: str) -> int:
    """The port of the master holding the version token of ``tag``."""
    name = caches["query"].make_key(query_results.version_key(tag))
    return int(query_results.transport.client.get_node_from_key(name).port)


@pytest.fixture
def products() -> list[Product]:
    category = Category.objects.create()
    return [
        Product.objects.create(name=f"p{n}", price=Decimal(0), category=category) for n in range(12)
    ]


def test_hit_and_no_stale_read_with_tokens_on_every_shard(
    on_cluster: list[RedisServer], products: list[Product]
) -> None:
    shards = {shard_of(on_cluster, f"testapp.product:{p.pk}") for p in products}
    assert len(shards) == 3, "the products' version tokens should spread over the 3 masters"
    assert_hit_on_second_read(products[0])
    stale = 0
    for cycle in range(1, 121):
        product = products[cycle % len(products)]
        Product.objects.filter(pk=product.pk).update(price=Decimal(cycle))
        stale += sum(price(product.pk) != Decimal(cycle) for _ in range(2))
    assert stale == 0
    assert stats.get("query_hits") >= 120
    assert stats.get("query_errors") == 0


def test_an_invalidation_on_any_shard_reaches_an_entry_on_another(
    on_cluster: list[RedisServer],
) -> None:
    """One entry tagged with keys whose tokens sit on three different masters: invalidating any
    one of them makes it a miss."""
    by_shard: dict[int, str] = {}
    for n in range(100):
        by_shard.setdefault(shard_of(on_cluster, f"shop.thing:{n}"), f"shop.thing:{n}")
    keys = sorted(by_shard.values())
    assert len(keys) == 3
    computed = []

    def compute() -> int:
        computed.append(1)
        return len(computed)

    assert query_results.get_or_set("things", compute, keys=keys) == 1
    assert query_results.get_or_set("things", compute, keys=keys) == 1  # a hit
    for round_, key in enumerate(keys, start=2):
        query_results.invalidate([key])
        assert query_results.get_or_set("things", compute, keys=keys) == round_
        assert query_results.get_or_set("things", compute, keys=keys) == round_


def test_a_cached_list_sees_a_row_saved_on_another_shard(
    on_cluster: list[RedisServer], products: list[Product]
) -> None:
    category = products[0].category

    def prices() -> list[Decimal]:
        return [p.price for p in Product.objects.filter(category=category).order_by("pk").cached()]

    # The rows' keys are new to this process: on a cluster (no single clock to compare their
    # tokens with) the first result is served, not stored; the second is read under them.
    assert prices() == [Decimal(0)] * 12
    assert prices() == [Decimal(0)] * 12
    with CaptureQueriesContext(connection) as queries:
        assert prices() == [Decimal(0)] * 12
    assert len(queries) == 0
    for n, product in enumerate(products, start=1):
        product.price = Decimal(n)
        product.save()
        assert prices()[n - 1] == Decimal(n)


def test_a_master_killed_and_restarted_empty(
    on_cluster: list[RedisServer], products: list[Product], settings: Any
) -> None:
    """Readers and writers carry on while one master is down (fail-open: from the database);
    once it is back, empty, nothing stale is served, here or in a second process."""
    settings.TIERCACHE = {**settings.TIERCACHE, "RETRY_INTERVAL": 0.1}
    pen = products[0]
    assert_hit_on_second_read(pen)
    other = QueryResults()  # a second process's service: same cache, its own state

    def other_price() -> Decimal:
        keys = [f"testapp.product:{pen.pk}"]
        return other.get_or_set("pen", lambda: Product.objects.get(pk=pen.pk).price, keys=keys)

    assert other_price() == other_price() == Decimal(0)  # cached there too
    stop, errors, cycles = threading.Event(), [], [0]

    def worker() -> None:
        try:
            while not stop.is_set():
                cycles[0] += 1
                value = Decimal(cycles[0])
                Product.objects.filter(pk=pen.pk).update(price=value)
                assert price(pen.pk) == value
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.5)
    # The master holding the pen's token: its reads and saves fail while it is down, whether or
    # not the other masters have declared the cluster down yet.
    port = shard_of(on_cluster, f"testapp.product:{pen.pk}")
    victim = next(node for node in on_cluster if node.port == port)
    victim.kill()
    time.sleep(3)  # past cluster-node-timeout: the other masters declare the cluster down
    victim.start()
    wait_until(lambda: cluster_ok(on_cluster), what="the cluster to recover")
    time.sleep(1)
    stop.set()
    thread.join(20)
    assert errors == []
    assert cycles[0] > 10
    assert stats.get("query_errors") > 0  # the outage was seen, and hidden from callers
    latest = Product.objects.get(pk=pen.pk).price
    assert price(pen.pk) == latest
    tiercache = settings.TIERCACHE
    settings.TIERCACHE = {**tiercache, "RECOVERY_POLL": 0}  # the other process looks now
    assert other_price() == latest
    settings.TIERCACHE = tiercache
    stale = 0
    for cycle in range(1000, 1030):
        product = products[cycle % len(products)]
        Product.objects.filter(pk=product.pk).update(price=Decimal(cycle))
        stale += sum(price(product.pk) != Decimal(cycle) for _ in range(2))
    assert stale == 0
    assert_hit_on_second_read(pen)


def another_process() -> QueryResults:
    """A service with its own state and its own cluster client (connections, restart check), as
    in another process: it takes the cache object of another thread."""
    service = QueryResults()
    thread = threading.Thread(target=lambda: service.transport)
    thread.start()
    thread.join()
    return service


@pytest.mark.parametrize("first", ["same", "warm", "new"])
def test_a_master_restarted_from_an_old_snapshot_serves_nothing_stale(
    on_cluster: list[RedisServer], products: list[Product], first: str
) -> None:
    """Snapshot (``SAVE``) the master holding the pen's token, commit an invalidation it
    acknowledges, kill -9, restart it from the snapshot: the token is back as it was before the
    commit. Whichever client reaches the restarted master first (this process's, a warm one of
    another process, a new one), none serves the old price."""
    pen = products[0]
    keys = [f"testapp.product:{pen.pk}"]
    victim = next(n for n in on_cluster if n.port == shard_of(on_cluster, keys[0]))
    warm = another_process()

    def warm_price() -> Decimal:
        return warm.get_or_set("pen", lambda: Product.objects.get(pk=pen.pk).price, keys=keys)

    assert_hit_on_second_read(pen)
    assert warm_price() == warm_price() == Decimal(0)
    victim.client().save()
    Product.objects.filter(pk=pen.pk).update(price=Decimal(1))  # after the snapshot: lost
    restarts = stats.get("query_restarts")
    victim.kill()
    try:
        victim.start()  # from the snapshot: the pen's token as it was with price 0 cached
    finally:
        (victim.dir / "dump.rdb").unlink()
    wait_until(lambda: cluster_ok(on_cluster), what="the cluster to recover")
    reads: dict[str, Callable[[], Decimal]] = {
        "same": lambda: price(pen.pk),
        "warm": warm_price,
        "new": lambda: another_process().get_or_set(
            "pen", lambda: Product.objects.get(pk=pen.pk).price, keys=keys
        ),
    }
    order = [first, *(name for name in reads if name != first)]
    # Twice each: an old connection's first read fails (RETRY_INTERVAL is 0 here).
    assert [reads[name]() for name in order for _ in range(2)] == [Decimal(1)] * 6
    assert stats.get("query_restarts") - restarts == 1
    assert_hit_on_second_read(pen)
    assert warm_price() == Decimal(1)


def replica_of(nodes: list[RedisServer], port: int) -> RedisServer:
    """The replica of the master on ``port``."""
    return next(
        node for node in nodes if node.client().info("replication").get("master_port") == port
    )


@contextmanager
def cut_from_its_master(replica: RedisServer) -> Iterator[None]:
    """The replica's link to its master broken until the block ends: it reconnects as a user
    that does not exist, so the master's writes meanwhile never reach it."""
    client = replica.client()
    client.config_set("masteruser", "tc-nobody")
    client.config_set("masterauth", "wrong")
    client.execute_command("CLIENT", "KILL", "TYPE", "master")
    wait_until(lambda: client.info("replication")["master_link_status"] == "down")
    try:
        yield
    finally:
        client.config_set("masteruser", "")
        client.config_set("masterauth", "")


@pytest.mark.parametrize("wait_for_replicas", [0, 1])
def test_a_replica_promoted_without_the_last_invalidation_serves_nothing_stale(
    on_replicated: list[RedisServer], products: list[Product], settings: Any, wait_for_replicas: int
) -> None:
    """The master holding the pen's token acknowledges an invalidation that its replica never
    gets; the replica takes over (``CLUSTER FAILOVER TAKEOVER``) with the token as it was
    before. Its run_id is not the one recorded: the tier's keys on it go before it serves.
    With WAIT_FOR_REPLICAS the invalidation fails at once, and its replay first meets the old
    master (``MOVED``), then reaches the new one."""
    _use(on_replicated, settings, wait_for_replicas)
    pen = products[0]
    port = shard_of(on_replicated, f"testapp.product:{pen.pk}")
    master = next(node for node in on_replicated if node.port == port)
    replica = replica_of(on_replicated, port)
    assert_hit_on_second_read(pen)
    restarts = stats.get("query_restarts")
    with cut_from_its_master(replica):
        Product.objects.filter(pk=pen.pk).update(price=Decimal(1))  # never reaches the replica
        replica.client().execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        wait_until(
            lambda: master.client().info("replication")["role"] == "slave",
            timeout=40,
            what="the old master to follow the promoted replica",
        )
    wait_until(lambda: cluster_ok(on_replicated), what="the cluster to agree")
    assert [price(pen.pk) for _ in range(3)] == [Decimal(1)] * 3
    assert stats.get("query_restarts") - restarts == 1
    assert_hit_on_second_read(pen)
    assert not PurgeRequest.objects.filter(results__query__ok=False).exists()


def test_wait_for_replicas_fails_an_invalidation_a_replica_did_not_confirm(
    on_replicated: list[RedisServer], products: list[Product], settings: Any
) -> None:
    """WAIT_FOR_REPLICAS on a cluster: tokens on every master are confirmed by its replica;
    one whose replica is cut off counts as failed, nothing is served until it has been replayed
    (confirmed, once the replica is back), then hits again."""
    _use(on_replicated, settings, wait_for_replicas=1)
    shards = {shard_of(on_replicated, f"testapp.product:{p.pk}") for p in products}
    assert len(shards) == 3
    for cycle, product in enumerate(products, start=1):
        Product.objects.filter(pk=product.pk).update(price=Decimal(cycle))
        assert price(product.pk) == price(product.pk) == Decimal(cycle)
    assert not PurgeRequest.objects.filter(results__query__ok=False).exists()
    pen = products[0]
    assert_hit_on_second_read(pen)
    replica = replica_of(on_replicated, shard_of(on_replicated, f"testapp.product:{pen.pk}"))
    with cut_from_its_master(replica):
        Product.objects.filter(pk=pen.pk).update(price=Decimal(99))  # unconfirmed: failed
        assert PurgeRequest.objects.filter(results__query__ok=False).count() == 1
        with CaptureQueriesContext(connection) as queries:
            assert price(pen.pk) == Decimal(99)
        assert len(queries) > 1  # from the database (after looking at the journal)
    wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up")
    assert price(pen.pk) == Decimal(99)  # replayed, confirmed, then read
    assert not PurgeRequest.objects.filter(results__query__ok=False).exists()
    assert_hit_on_second_read(pen)


def test_the_backend_is_a_django_cache(on_cluster: list[RedisServer]) -> None:
    """The alias serves other uses too: Django's cache API, keys on every master."""
    cache = caches["query"]
    cache.set_many({f"k{n}": {"n": n} for n in range(30)}, 60)
    assert cache.get_many([f"k{n}" for n in range(30)]) == {f"k{n}": {"n": n} for n in range(30)}
    assert cache.add("k1", "other") is False
    assert cache.add("new", "value", 60) is True
    assert cache.get("new") == "value"
    cache.set("count", 1)
    assert cache.incr("count", 2) == 3
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")
    assert cache.touch("count", None) is True
    assert cache.has_key("count")
    cache.delete_many([f"k{n}" for n in range(30)])
    assert cache.get_many([f"k{n}" for n in range(30)]) == {}
    cache.set("gone", 1, 0)  # a timeout of 0 expires at once, as in Django
    assert cache.get("gone", "default") == "default"
    assert cache.delete("new") is True
    assert cache.get("new") is None


def test_invalidate_all_drops_the_tier_s_keys_only(
    on_cluster: list[RedisServer], products: list[Product]
) -> None:
    caches["query"].set("session:1", "kept")
    for product in products:
        assert_hit_on_second_read(product)
    prefix = f"*{query_results.entry_key('')}*"
    assert sum(len(node.client().keys(prefix)) for node in on_cluster) == len(products)
    query_results.invalidate_all()
    assert caches["query"].get("session:1") == "kept"
    assert all(node.client().keys(prefix) == [] for node in on_cluster)
    assert all(
        node.client().keys(f"*{query_results.version_key('')}*") == [] for node in on_cluster
    )
    with CaptureQueriesContext(connection) as queries:
        price(products[0].pk)
    assert len(queries) == 1  # the entry is gone


@pytest.mark.postgres  # under SQLite: on a private server (tests/test_on_postgres.py)
def test_no_stale_read_with_concurrent_writers_and_readers(
    on_cluster: list[RedisServer], products: list[Product]
) -> None:
    """Two writers and two readers on products whose tokens sit on every master: a read that
    starts after a save's commit hook returned never sees an older price."""
    if connection.vendor == "sqlite":
        pytest.skip("concurrent writers need PostgreSQL (TIERCACHE_TEST_DATABASE=postgres)")
    committed = {p.pk: 0 for p in products}  # the latest price whose invalidation completed
    stale, errors, lock = [], [], threading.Lock()

    def writer(offset: int) -> None:
        try:
            for cycle in range(offset, 150, 2):
                product = products[cycle % len(products)]
                Product.objects.filter(pk=product.pk).update(price=Decimal(cycle))
                with lock:  # the commit hook has returned: the save is complete
                    committed[product.pk] = max(committed[product.pk], cycle)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def reader() -> None:
        try:
            for n in range(300):
                product = products[n % len(products)]
                with lock:
                    floor = committed[product.pk]
                if price(product.pk) < floor:
                    stale.append(product.pk)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(offset,)) for offset in (1, 2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert stale == []
    assert stats.get("query_hits") > 0


def test_a_stalled_master_costs_one_failed_read_per_retry_interval(
    on_cluster: list[RedisServer], products: list[Product], settings: Any
) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "RETRY_INTERVAL": 60}
    victims = [
        p for p in products if shard_of(on_cluster, f"testapp.product:{p.pk}") == on_cluster[2].port
    ]
    pen = victims[0]
    assert_hit_on_second_read(pen)
    on_cluster[2].pause(3)
    for _ in range(20):
        assert price(pen.pk) == Decimal(0)  # from the database
    assert stats.get("query_errors") == 1  # one timeout; the other reads left Redis alone
