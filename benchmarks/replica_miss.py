"""Query-tier costs behind a read replica, with the replica-lag safety on and off.

Starts a private PostgreSQL primary and a streaming replica 300 ms behind it (tests/pg_cluster.py:
needs the server binaries, ``apt-get install postgresql``) and uses Redis DB 13 like the other
benchmarks (``TIERCACHE_BENCH_REDIS_URL``). Every row times its variants alternately in this one
process, so that they see the same machine. Usage::

    python benchmarks/replica_miss.py [--iterations 400]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.query_tier import REDIS_URL  # noqa: E402
from tests.pg_cluster import Cluster, find_bindir, start_cluster  # noqa: E402


def configure(cluster: Cluster, prefix: str) -> None:
    import django
    from django.conf import settings

    def server(port: int) -> dict[str, Any]:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "postgres",
            "HOST": cluster.host,
            "PORT": str(port),
            "USER": "postgres",
            "CONN_MAX_AGE": None,
        }

    settings.configure(
        DEBUG=False,
        INSTALLED_APPS=["django.contrib.contenttypes", "django_tiercache", "benchmarks.benchapp"],
        DATABASES={
            "default": server(cluster.primary_port),
            "replica": server(cluster.replica_port),
        },
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": REDIS_URL,
                "KEY_PREFIX": prefix,
            }
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        TIERCACHE={"KEY_PREFIX": prefix, "PURGE_ASYNC": False},
    )
    django.setup()


def seed(rows: int) -> list[int]:
    from django.core.management import call_command
    from django.db import ProgrammingError, connection

    from benchmarks.benchapp.models import Group, Item

    call_command("migrate", "django_tiercache", verbosity=0)  # the journal's table
    with connection.schema_editor() as editor:
        editor.create_model(Group)
        editor.create_model(Item)
    group = Group.plain.create(name="g")
    Item.plain.bulk_create([Item(name=f"i{i}", group=group) for i in range(rows)], batch_size=2000)
    pks = list(Item.plain.order_by("pk").values_list("pk", flat=True))
    while True:  # until the replica has the table and the rows
        try:
            if Item.plain.using("replica").count() >= rows:
                break
        except ProgrammingError:  # the table is not there yet
            pass
        time.sleep(0.05)
    return pks


@contextmanager
def safety(on: bool) -> Iterator[None]:
    from django.test import override_settings

    with override_settings(TIERCACHE={**_base(), **({} if on else {"READ_REPLICAS": []})}):
        yield


def _base() -> dict[str, Any]:
    from django.conf import settings

    return {k: v for k, v in settings.TIERCACHE.items() if k != "READ_REPLICAS"}


def timed(*variants: Callable[[int], Any], n: int) -> list[list[float]]:
    """Run the variants alternately ``n`` times; the microseconds of each call, per variant."""
    samples: list[list[float]] = [[] for _ in variants]
    for i in range(n):
        for index, variant in enumerate(variants):
            start = time.perf_counter_ns()
            variant(i)
            samples[index].append((time.perf_counter_ns() - start) / 1000)
    return samples


def cell(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered):.0f} / {p99:.0f}"


Rows = list[tuple[str, list[float], list[float], list[float]]]


def measure(pks: list[int], n: int) -> tuple[Rows, int]:
    """Rows of (operation, one database, via replica with the safety, via replica without)."""
    from benchmarks.benchapp.models import Item
    from django_tiercache import stats

    def on(alias: str) -> Any:
        return Item.objects.cached().using(alias)

    rows = []
    hot = pks[:50]
    for alias in ("default", "replica"):  # the entries exist
        for pk in hot:
            on(alias).get(pk=pk)
    fresh = iter(pks[50:])
    results: dict[bool, list[list[float]]] = {}
    for flag in (True, False):
        with safety(flag):
            hits = timed(
                lambda i: on("default").get(pk=hot[i % 50]),
                lambda i: on("replica").get(pk=hot[i % 50]),
                n=n,
            )
            cold = timed(
                lambda i: on("default").get(pk=next(fresh)),
                lambda i: on("replica").get(pk=next(fresh)),
                n=n,
            )
            results[flag] = [*hits, *cold]
    rows.append(("hit (get by pk)", results[True][0], results[True][1], results[False][1]))
    rows.append(("cold miss (get by pk)", results[True][2], results[True][3], results[False][3]))
    # Save, then at once a miss: the replica has not applied the save (300 ms apply delay).
    target = Item.plain.get(pk=pks[-1])
    after: dict[tuple[bool, str], list[list[float]]] = {}
    for flag, alias in ((True, "default"), (True, "replica"), (False, "replica")):
        with safety(flag):
            after[flag, alias] = [[], []]
            for i in range(n):
                target.price = i
                start = time.perf_counter_ns()
                target.save()
                middle = time.perf_counter_ns()
                on(alias).get(pk=target.pk)
                after[flag, alias][0].append((middle - start) / 1000)
                after[flag, alias][1].append((time.perf_counter_ns() - middle) / 1000)
    variants = [after[True, "default"], after[True, "replica"], after[False, "replica"]]
    rows.append(("save (commit + invalidation)", *(v[0] for v in variants)))
    rows.append(("miss right after that save", *(v[1] for v in variants)))
    # A save the replica has applied, then a miss: this connection asks the replica once.
    applied: list[float] = []
    with safety(True):
        for i in range(min(n, 40)):
            target.price = -i
            target.save()
            time.sleep(0.35)
            start = time.perf_counter_ns()
            on("replica").get(pk=target.pk)
            applied.append((time.perf_counter_ns() - start) / 1000)
    rows.append(("miss after a save the replica has applied", [], applied, []))
    return rows, stats.get("query_primary_reads")


def table(rows: Rows, primary_reads: int) -> str:
    lines = [
        "| operation (µs, median / p99) | one database | via replica, safety on "
        "| via replica, safety off |",
        "|---|---|---|---|",
    ]
    for name, one, safe, unsafe in rows:
        cells = [cell(s) if s else "–" for s in (one, safe, unsafe)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append(
        f"\nMisses the safety sent to the primary: {primary_reads} (each miss right after a save "
        "through the replica). The rows without the safety read the replica's old rows; with it "
        "a hit costs what it costs on one database, and a miss of a key that has not changed "
        "since this connection last asked the replica costs one more Redis MGET."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400)
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        print("unavailable: no PostgreSQL server binaries (apt-get install postgresql)")
        return
    prefix = f"tcbench-replica-{uuid.uuid4().hex[:8]}"
    with start_cluster(bindir) as cluster:
        configure(cluster, prefix)
        try:
            pks = seed(4 * args.iterations + 100)
            print(table(*measure(pks, args.iterations)))
        finally:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(f"*{prefix}*", count=1000):
                client.delete(key)


if __name__ == "__main__":
    main()
