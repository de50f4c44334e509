"""Query-tier benchmark: django-tiercache next to django-cacheops, django-cachalot, no cache and
the raw floor ("Redis GET + unpickle"), each measured in its own process of the same run.

Needs PostgreSQL and Redis (defaults: this machine's, database ``tiercache_bench``, Redis DB 13;
override with TIERCACHE_BENCH_PG_HOST / _PG_NAME / TIERCACHE_BENCH_REDIS_URL). cacheops and
cachalot are
optional: ``make bench`` installs them into the benchmark's own virtualenv. Usage::

    python benchmarks/query_tier.py [--iterations 2000] [--rounds 3] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = ("none", "floor", "tiercache", "cacheops", "cachalot")
OPERATIONS = ("get_hit", "list100_hit", "count_hit", "cold_miss", "save_reread")
LABELS = {
    "get_hit": "get-by-pk hit",
    "list100_hit": "list-of-100 hit",
    "count_hit": "count hit",
    "cold_miss": "cold miss (get-by-pk)",
    "save_reread": "save then re-read",
}
# target ratio of tiercache, and what it is measured against
TARGETS = {
    "get_hit": (1.6, "floor"),
    "list100_hit": (1.3, "floor"),
    "count_hit": (1.6, "floor"),
    "cold_miss": (1.6, "none"),  # and below cacheops and cachalot (printed under the table)
    "save_reread": (1.3, "none"),
}
GROUPS, PER_GROUP = 100, 100
REDIS_URL = os.environ.get("TIERCACHE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
DATABASE = os.environ.get("TIERCACHE_BENCH_PG_NAME", "tiercache_bench")


def configure(contender: str, prefix: str) -> None:
    import django
    from django.conf import settings

    apps = ["django.contrib.contenttypes", "benchmarks.benchapp"]
    extra: dict[str, Any] = {}
    if contender == "tiercache":
        apps.append("django_tiercache")
        extra["TIERCACHE"] = {"KEY_PREFIX": prefix, "PURGE_ASYNC": False}
    elif contender == "cacheops":
        apps.append("cacheops")
        extra["CACHEOPS_REDIS"] = REDIS_URL
        extra["CACHEOPS_PREFIX"] = lambda _: prefix
        extra["CACHEOPS"] = {"benchapp.*": {"ops": (), "timeout": 300}}
    elif contender == "cachalot":
        apps.append("cachalot")
        extra["CACHALOT_ONLY_CACHABLE_TABLES"] = ["benchapp_item", "benchapp_group"]
    settings.configure(
        DEBUG=False,
        INSTALLED_APPS=apps,
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": DATABASE,
                "HOST": os.environ.get("TIERCACHE_BENCH_PG_HOST", "127.0.0.1"),
                "USER": os.environ.get("TIERCACHE_BENCH_PG_USER", "postgres"),
                "CONN_MAX_AGE": None,
            }
        },
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": REDIS_URL,
                "KEY_PREFIX": prefix,
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
            }
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        **extra,
    )
    django.setup()


def ensure_database() -> None:
    import psycopg

    host = os.environ.get("TIERCACHE_BENCH_PG_HOST", "127.0.0.1")
    user = os.environ.get("TIERCACHE_BENCH_PG_USER", "postgres")
    with psycopg.connect(host=host, user=user, dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", [DATABASE])
        if not exists.fetchone():
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def seed() -> None:
    from django.db import connection

    from benchmarks.benchapp.models import Group, Item

    with connection.schema_editor() as editor:
        for model in (Item, Group):
            editor.execute(f"DROP TABLE IF EXISTS {model._meta.db_table} CASCADE")
        editor.create_model(Group)
        editor.create_model(Item)
    groups = Group.plain.bulk_create([Group(name=f"g{i}") for i in range(GROUPS)])
    Item.plain.bulk_create(
        [Item(name=f"item{g.pk}-{i}", price=i, group=g) for g in groups for i in range(PER_GROUP)],
        batch_size=2000,
    )


def create_outbox() -> None:
    """django-tiercache's own table, as its migration makes it on a real site (the query tier
    looks at it every RECOVERY_POLL seconds)."""
    from django.db import connection

    from django_tiercache.models import PurgeRequest

    if PurgeRequest._meta.db_table not in connection.introspection.table_names():
        with connection.schema_editor() as editor:
            editor.create_model(PurgeRequest)


def timed(operation: Callable[[int], Any], iterations: int) -> list[float]:
    samples = []
    for i in range(iterations):
        start = time.perf_counter_ns()
        operation(i)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def querysets(contender: str) -> Callable[[], Any]:
    from benchmarks.benchapp.models import Item

    if contender == "tiercache":
        return lambda: Item.objects.cached()
    if contender == "cacheops":
        return lambda: Item.plain.cache()
    return lambda: Item.plain.all()


def count_round_trips() -> list[int]:
    """Count the commands redis-py sends (a pipeline counts once)."""
    from redis.connection import AbstractConnection

    counter = [0]
    original = AbstractConnection.send_packed_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return original(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    _original_send.append(original)
    return counter


_original_send: list[Any] = []


def uncount_round_trips() -> None:
    from redis.connection import AbstractConnection

    AbstractConnection.send_packed_command = _original_send.pop()  # type: ignore[method-assign]


def run_floor(iterations: int) -> dict[str, Any]:
    import redis

    from benchmarks.benchapp.models import Item

    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"tcbench-floor-{uuid.uuid4().hex[:8]}"
    one = Item.plain.get(pk=Item.plain.order_by("pk").values_list("pk", flat=True)[0])
    hundred = list(Item.plain.filter(group_id=one.group_id).order_by("id")[:100])
    payloads = {"get_hit": one, "list100_hit": hundred, "count_hit": len(hundred)}
    results: dict[str, Any] = {}
    try:
        for op, payload in payloads.items():
            client.set(f"{prefix}:{op}", pickle.dumps(payload, pickle.HIGHEST_PROTOCOL), ex=300)
            key = f"{prefix}:{op}"
            samples = timed(lambda i, key=key: pickle.loads(client.get(key)), iterations)  # type: ignore[misc]
            results[op] = summary(samples)
    finally:
        client.delete(*(f"{prefix}:{op}" for op in payloads))
    return results


def paired(
    operation: Callable[[int], Any], baseline: Callable[[int], Any], iterations: int
) -> tuple[list[float], list[float]]:
    """Time ``operation`` and ``baseline`` alternately, so both see the same machine."""
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(iterations):
        for index, function in enumerate((operation, baseline)):
            start = time.perf_counter_ns()
            function(i)
            samples[index].append((time.perf_counter_ns() - start) / 1000)
    return samples


def run_contender(contender: str, iterations: int) -> dict[str, Any]:
    """Every operation; for tiercache, each paired with its baseline in this same process."""
    import redis

    from benchmarks.benchapp.models import Item

    qs = querysets(contender)
    pks = list(Item.plain.order_by("pk").values_list("pk", flat=True))
    group = Item.plain.get(pk=pks[0]).group_id
    results: dict[str, Any] = {}
    warm = 200
    client = redis.Redis.from_url(REDIS_URL)
    floor_key = f"tcbench-pairfloor-{uuid.uuid4().hex[:8]}"

    def get_hit(i: int) -> Any:
        return qs().get(pk=pks[i % 50])

    def list_hit(i: int) -> Any:
        return list(qs().filter(group_id=group).order_by("id")[:100])

    def count_hit(i: int) -> Any:
        return qs().filter(group_id=group).count()

    def floor(i: int) -> Any:
        return pickle.loads(client.get(floor_key))

    try:
        for name, op in (("get_hit", get_hit), ("list100_hit", list_hit), ("count_hit", count_hit)):
            for i in range(warm):
                payload = op(i)
            client.set(floor_key, pickle.dumps(payload, pickle.HIGHEST_PROTOCOL), ex=300)
            if contender == "tiercache":
                ours, base = paired(op, floor, iterations)
                results[name] = summary(ours)
                results[name]["paired_ratio"] = summary(ours)["median"] / summary(base)["median"]
                counter = count_round_trips()
                for i in range(100):
                    op(i)
                results[name]["round_trips"] = counter[0] / 100
                uncount_round_trips()
            else:
                results[name] = summary(timed(op, iterations))
    finally:
        client.delete(floor_key)
    fresh = pks[1000:]

    def cold_miss(i: int) -> Any:
        return qs().get(pk=fresh[(2 * i) % len(fresh)])

    def cold_plain(i: int) -> Any:
        return Item.plain.get(pk=fresh[(2 * i + 1) % len(fresh)])

    target = Item.plain.get(pk=pks[-1])
    other = Item.plain.get(pk=pks[-2])
    qs().get(pk=target.pk)

    def save_reread(i: int) -> Any:
        target.price = i
        target.save()
        return qs().get(pk=target.pk)

    def save_reread_plain(i: int) -> Any:
        other.price = i
        other.save()
        return Item.plain.get(pk=other.pk)

    n_cold, n_save = min(iterations, len(fresh) // 2), max(200, iterations // 5)
    if contender == "tiercache":
        for name, op, base_op, n in (
            ("cold_miss", cold_miss, cold_plain, n_cold),
            ("save_reread", save_reread, save_reread_plain, n_save),
        ):
            ours, base = paired(op, base_op, n)
            results[name] = summary(ours)
            results[name]["paired_ratio"] = summary(ours)["median"] / summary(base)["median"]
    else:
        results["cold_miss"] = summary(timed(cold_miss, n_cold))
        results["save_reread"] = summary(timed(save_reread, n_save))
    return results


def worker(contender: str, iterations: int) -> None:
    prefix = f"tcbench-{contender}-{uuid.uuid4().hex[:8]}"
    configure(contender, prefix)
    try:
        if contender == "seed":
            seed()
            print(json.dumps({}))
            return
        if contender == "tiercache":
            create_outbox()
        if contender == "floor":
            result = run_floor(iterations)
        else:
            result = run_contender(contender, iterations)
        print(json.dumps(result))
    finally:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"*{prefix}*", count=1000):
            client.delete(key)


def launch(contender: str, iterations: int) -> dict[str, Any] | str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", contender, "--iterations", str(iterations)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return f"unavailable ({last[:80]})"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def combine(runs: list[dict[str, Any] | str]) -> dict[str, Any] | str:
    """The median of each statistic over the rounds (the first error if every round failed)."""
    good = [run for run in runs if isinstance(run, dict)]
    if not good:
        return runs[0]
    combined: dict[str, Any] = {}
    for op in good[0]:
        combined[op] = {
            stat: statistics.median(run[op][stat] for run in good if op in run)
            for stat in good[0][op]
        }
    return combined


def table(results: dict[str, dict[str, Any] | str]) -> str:
    def cell(contender: str, op: str, stat: str = "median") -> str:
        data = results.get(contender)
        if not isinstance(data, dict) or op not in data:
            return "–"
        return f"{data[op][stat]:.0f}"

    lines = [
        "| operation (µs, median / p99) | tiercache | cacheops | cachalot | floor | no cache "
        "| tiercache ratio | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for op in OPERATIONS:
        limit, against = TARGETS[op]
        tc = results.get("tiercache")
        base = results.get(against)
        ratio = "–"
        if isinstance(tc, dict) and "paired_ratio" in tc.get(op, {}):
            ratio = f"{tc[op]['paired_ratio']:.2f}× {'floor' if against == 'floor' else 'no cache'}"
        elif isinstance(tc, dict) and isinstance(base, dict) and op in base:
            value = tc[op]["median"] / base[op]["median"]
            ratio = f"{value:.2f}× {'floor' if against == 'floor' else 'no cache'}"
        cells = [
            f"{cell(c, op)} / {cell(c, op, 'p99')}"
            for c in ("tiercache", "cacheops", "cachalot", "floor", "none")
        ]
        lines.append(
            f"| {LABELS[op]} | {' | '.join(cells)} | {ratio} | ≤ {limit}× "
            f"{'floor' if against == 'floor' else 'no cache'} |"
        )
    tc = results.get("tiercache")
    if isinstance(tc, dict):
        rivals = [c for c in ("cacheops", "cachalot") if isinstance(results.get(c), dict)]
        if rivals:
            lines.append("")
            lines.append(
                "Cold miss, tiercache against the other query caches of this run: "
                + ", ".join(
                    f"{c} {tc['cold_miss']['median'] / results[c]['cold_miss']['median']:.2f}×"
                    for c in rivals
                )
                + " (target: below 1.00× of both)"
            )
        trips = {op: tc[op].get("round_trips") for op in ("get_hit", "list100_hit", "count_hit")}
        lines.append("")
        lines.append(
            "Redis round trips per tiercache hit: "
            + ", ".join(f"{LABELS[op]} {value:.2f}" for op, value in trips.items() if value)
        )
        lines.append(
            "\nThe tiercache ratio is paired: each tiercache operation alternates, in the same "
            "process, with its baseline (the floor: a raw redis-py GET + pickle.loads of the same "
            "result; no cache: the same operation through Django's plain manager). The floor and "
            "no-cache columns come from their own processes."
        )
        lines.append(f"\nredis-py's protocol parser and packer in every process: {_parser()}.")
    for contender, data in results.items():
        if isinstance(data, str):
            lines.append(f"\n{contender}: {data}")
    return "\n".join(lines)


def _parser() -> str:
    from redis.utils import HIREDIS_AVAILABLE

    return "hiredis (django-tiercache[hiredis])" if HIREDIS_AVAILABLE else "pure Python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=(*CONTENDERS, "seed"))
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="turns taken by each contender")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.iterations)
        return
    ensure_database()
    seeded = launch("seed", args.iterations)
    if isinstance(seeded, str):
        sys.exit(f"seeding failed: {seeded}")
    # Contenders take turns, round after round, so that a machine busier at one moment than
    # another does not favour whoever ran then; each cell is the median over the rounds.
    rounds: dict[str, list[dict[str, Any] | str]] = {c: [] for c in CONTENDERS}
    for _ in range(args.rounds):
        for contender in CONTENDERS:
            rounds[contender].append(launch(contender, args.iterations))
    results = {c: combine(runs) for c, runs in rounds.items()}
    output = table(results)
    print(output)
    if args.markdown:
        args.markdown.write_text(output + "\n")


if __name__ == "__main__":
    main()
