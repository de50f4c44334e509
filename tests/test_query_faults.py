"""Faults seen from other processes: a Redis restarted from an old snapshot, and a failed
invalidation that a warm second process (a real OS process, tests/fault_reader.py) never saw.
Each runs against a private ``redis-server``; the second process needs the test database to be
shared, so these tests run on PostgreSQL (``TIERCACHE_TEST_DATABASE=postgres``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.db import connection
from redis.exceptions import OutOfMemoryError

from django_tiercache import stats
from django_tiercache.models import PurgeRequest
from tests.redis_server import RedisServer
from tests.test_query_deployments import assert_hit_on_second_read, price
from tests.testapp.models import Category, Product

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # A second process needs the test database (SQLite's is in memory): under SQLite these run
    # on a private PostgreSQL server (tests/test_on_postgres.py).
    pytest.mark.postgres,
]

#: RECOVERY_POLL of the second process: the documented bound on how long it may serve stale.
POLL = 1.0


class Reader:
    """A second Django process reading the product through the query tier on ``redis_url``."""

    def __init__(self, redis_url: str, recovery_poll: float | None) -> None:
        env = {
            **os.environ,
            "TIERCACHE_TEST_REDIS_URL": redis_url,
            "TIERCACHE_TEST_POSTGRES_NAME": connection.settings_dict["NAME"],
            "TIERCACHE_TEST_KEY_PREFIX": django_settings.TIERCACHE["KEY_PREFIX"],
            "TIERCACHE_TEST_RECOVERY_POLL": "none" if recovery_poll is None else str(recovery_poll),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fault_reader"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self, pk: int) -> tuple[Decimal, bool]:
        """The price it serves, and whether that was a hit."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"read {pk}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().split()
        assert answer, "the second process died (its stderr is above)"
        return Decimal(answer[0]), answer[1] == "hit"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        self.process.wait(timeout=20)


@pytest.fixture
def readers() -> Iterator[Callable[..., Reader]]:
    started: list[Reader] = []

    def start(redis_url: str, recovery_poll: float | None = None) -> Reader:
        started.append(Reader(redis_url, recovery_poll))
        return started[-1]

    yield start
    for reader in started:
        reader.close()


@pytest.fixture
def pen() -> Product:
    return Product.objects.create(name="pen", price=Decimal(1), category=Category.objects.create())


@pytest.mark.parametrize("first", ["same", "warm", "new"])
def test_redis_restarted_from_an_old_snapshot_serves_nothing_stale(
    pen: Product, plain_redis: RedisServer, readers: Callable[..., Reader], first: str
) -> None:
    """Snapshot (``SAVE``), commit an invalidation Redis acknowledges, kill -9, restart from the
    snapshot: its entry and tokens predate the commit. Whichever process reaches the restarted
    server first (this one, a warm second process, a new one), no process serves the old price."""
    warm = readers(plain_redis.url)
    assert_hit_on_second_read(pen)
    assert warm.read(pen.pk) == (Decimal(1), True)
    plain_redis.client().save()
    Product.objects.filter(pk=pen.pk).update(price=Decimal(2))  # after the snapshot: lost
    assert price(pen.pk) == Decimal(2)
    assert warm.read(pen.pk)[0] == Decimal(2)
    restarts = stats.get("query_restarts")
    plain_redis.kill()
    plain_redis.start()  # from the snapshot: price 1 cached under the tokens it had then
    reads: dict[str, Callable[[], Decimal]] = {
        "same": lambda: price(pen.pk),
        "warm": lambda: warm.read(pen.pk)[0],
        "new": lambda: readers(plain_redis.url).read(pen.pk)[0],
    }
    order = [first, *(name for name in reads if name != first)]
    assert [reads[name]() for name in order] == [Decimal(2)] * 3
    assert stats.get("query_restarts") - restarts == (1 if first == "same" else 0)
    assert_hit_on_second_read(pen)
    assert warm.read(pen.pk) == (Decimal(2), True)


def _fill(server: RedisServer) -> None:
    """Make Redis full (``noeviction``, the limit well below what it holds): every write fails
    with OOM, reads still work."""
    redis = server.client()
    redis.set("filler", b"x" * 4 * 1024 * 1024)
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", 2 * 1024 * 1024)
    with pytest.raises(OutOfMemoryError):
        redis.set("more", b"x")


def test_a_warm_process_that_never_saw_the_failure_replays_it_within_recovery_poll(
    pen: Product, plain_redis: RedisServer, readers: Callable[..., Reader]
) -> None:
    """A second process, warm before the fault, reads nothing while this one's invalidation
    fails (Redis full). Once Redis takes writes again and RECOVERY_POLL has passed, it replays
    the failure from the journal before serving: no stale read, and hits again after."""
    warm = readers(plain_redis.url, recovery_poll=POLL)
    assert warm.read(pen.pk) == (Decimal(1), False)
    assert warm.read(pen.pk) == (Decimal(1), True)
    _fill(plain_redis)
    Product.objects.filter(pk=pen.pk).update(price=Decimal(2))  # the invalidation fails
    assert PurgeRequest.objects.filter(results__query__ok=False).count() == 1
    plain_redis.client().config_set("maxmemory", 0)  # recovered; this process reads no more
    time.sleep(POLL)
    served = [warm.read(pen.pk) for _ in range(20)]
    assert [value for value, _hit in served] == [Decimal(2)] * 20
    assert served[-1][1], "the cache serves hits again"
    assert not PurgeRequest.objects.filter(results__query__ok=False).exists()
