"""Query-tier hit and miss on a Redis Cluster of three masters against one Redis.

Starts its own servers on free ports (tests/redis_server.py: one ``redis-server``, and three
cluster-enabled ones), SQLite in memory for the rows. Every row alternates the two caches in
this one process, sample by sample, so that both see the same machine. Usage::

    python benchmarks/cluster_hit.py [--iterations 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import cluster, private_redis  # noqa: E402

TIMEOUTS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}


def configure(single: str, nodes: list[str]) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        INSTALLED_APPS=["django.contrib.contenttypes", "django_tiercache", "benchmarks.benchapp"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "single": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": single,
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
            },
            "cluster": {
                "BACKEND": "django_tiercache.query.cluster.RedisClusterCache",
                "LOCATION": nodes,
                "OPTIONS": TIMEOUTS,
            },
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        TIERCACHE={"CACHE_ALIAS": "single", "PURGE_ASYNC": False, "RECOVERY_POLL": None},
    )
    django.setup()


def seed() -> list[int]:
    from django.core.management import call_command
    from django.db import connection

    from benchmarks.benchapp.models import Group, Item

    call_command("migrate", "django_tiercache", verbosity=0)
    with connection.schema_editor() as editor:
        editor.create_model(Group)
        editor.create_model(Item)
    group = Group.plain.create(name="g")
    Item.plain.bulk_create([Item(name=f"i{i}", group=group) for i in range(200)])
    return list(Item.plain.order_by("pk").values_list("pk", flat=True))


def operations(pks: list[int]) -> dict[str, Callable[[int], Any]]:
    from benchmarks.benchapp.models import Item
    from django_tiercache.query import query_results

    three = ["bench.a:1", "bench.b:2", "bench.c:3"]  # tokens on 1 to 3 shards

    def hit_get(i: int) -> Any:
        return Item.objects.cached().get(pk=pks[i % 50])

    def hit_three_tags(i: int) -> Any:
        return query_results.get_or_set(f"three:{i % 50}", lambda: i, keys=three)

    def miss_get(i: int) -> Any:
        return Item.objects.cached().get(pk=pks[50 + i % 150])

    return {"hit, get by pk": hit_get, "hit, 3 tags": hit_three_tags, "miss, get by pk": miss_get}


def measure(pks: list[int], iterations: int) -> dict[tuple[str, str], list[float]]:
    from django.test.utils import override_settings

    from django_tiercache.query import query_results

    base = {"PURGE_ASYNC": False, "RECOVERY_POLL": None}
    samples: dict[tuple[str, str], list[float]] = {}
    for name, operation in operations(pks).items():
        for i in range(iterations):
            for alias in ("single", "cluster"):
                with override_settings(TIERCACHE={**base, "CACHE_ALIAS": alias}):
                    if name.startswith("miss"):
                        query_results.invalidate([f"benchapp.item:{pks[50 + i % 150]}"])
                    else:
                        operation(i)  # warm (a hit from the second iteration on)
                    start = time.perf_counter_ns()
                    operation(i)
                    samples.setdefault((name, alias), []).append(
                        (time.perf_counter_ns() - start) / 1000
                    )
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with private_redis() as single, cluster(3) as nodes:
        configure(single.url, [node.url for node in nodes])
        pks = seed()
        medians: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for key, values in measure(pks, args.iterations).items():
                medians.setdefault(key, []).append(statistics.median(values))
    print("| operation (µs, median of round medians) | one Redis | cluster, 3 masters | ratio |")
    print("|---|---|---|---|")
    for name in dict.fromkeys(name for name, _ in medians):
        one = statistics.median(medians[name, "single"])
        three = statistics.median(medians[name, "cluster"])
        print(f"| {name} | {one:.0f} | {three:.0f} | {three / one:.2f}× |")
    print(f"\nrounds: {args.rounds} × {args.iterations} iterations")


if __name__ == "__main__":
    main()
