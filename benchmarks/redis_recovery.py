"""Query-tier throughput while Redis is killed under read load and started again.

Reader threads read items by primary key through the query tier (a few also save one, so misses
take single-flight locks and some invalidations fail while Redis is down). A private
``redis-server`` (tests/redis_server.py) is killed with SIGKILL, left down, and started again,
empty or (``--snapshot``) from a snapshot taken before an acknowledged save. Prints reads per
second before, while down, and per 0.5 s after the restart, relative to before; the issue's bar
is "back within 10 % of before in <= 5 s" (the first 0.5 s at 90 % of before, and the median
after it), and "no single-flight lock orphaned" (no lock key left,
no read that waited ``SINGLE_FLIGHT_WAIT``). PostgreSQL as in benchmarks/query_tier.py
(``TIERCACHE_BENCH_PG_NAME``). Usage::

    python benchmarks/redis_recovery.py [--runs 3] [--threads 4] [--snapshot] [--retry-interval 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.query_tier import DATABASE  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

BUCKET = 0.5
HOT = 200  # items read
WRITE_EVERY = 50  # one save per this many reads, per thread


def configure(redis_url: str, retry_interval: float) -> None:
    import django
    from django.conf import settings

    prefix = f"tc-recovery-{uuid.uuid4().hex[:8]}"
    settings.configure(
        DEBUG=False,
        INSTALLED_APPS=["django.contrib.contenttypes", "django_tiercache", "benchmarks.benchapp"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": DATABASE,
                "HOST": "127.0.0.1",
                "USER": "postgres",
                "CONN_MAX_AGE": None,
            }
        },
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": redis_url,
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
            }
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        TIERCACHE={"KEY_PREFIX": prefix, "PURGE_ASYNC": False, "RETRY_INTERVAL": retry_interval},
    )
    django.setup()


def seed() -> list[int]:
    from django.core.management import call_command
    from django.db import connection

    from benchmarks.benchapp.models import Group, Item

    call_command("migrate", "django_tiercache", verbosity=0)  # the journal's table
    with connection.schema_editor() as editor:
        editor.create_model(Group)
        editor.create_model(Item)
    group = Group.plain.create(name="g")
    Item.plain.bulk_create([Item(name=f"i{i}", group=group) for i in range(HOT)])
    return list(Item.plain.values_list("pk", flat=True))


def drop_tables() -> None:
    from django.db import connection

    from benchmarks.benchapp.models import Group, Item

    with connection.schema_editor() as editor:
        editor.delete_model(Item)
        editor.delete_model(Group)


class Load:
    """Reader threads; ``done`` counts reads, ``slow`` those that took over a second."""

    def __init__(self, pks: list[int], threads: int) -> None:
        self.pks, self.done, self.slow, self.errors = pks, 0, 0, 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, args=(n,)) for n in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _read(self, seed: int) -> None:
        from django.db import connections
        from django.db.models import F

        from benchmarks.benchapp.models import Item

        chooser = random.Random(seed)
        count = 0
        while not self._stop.is_set():
            pk = chooser.choice(self.pks)
            started = time.monotonic()
            try:
                Item.objects.cached().get(pk=pk)
                count += 1
                if count % WRITE_EVERY == 0:
                    Item.objects.filter(pk=pk).update(price=F("price") + 1)
            except Exception:
                with self._lock:
                    self.errors += 1
                continue
            took = time.monotonic() - started
            with self._lock:
                self.done += 1
                self.slow += took > 1.0
        connections.close_all()


def one_run(args: argparse.Namespace, pks: list[int], server: RedisServer) -> dict[str, Any]:
    """Reads per second: median bucket before, median while down, each bucket after restart."""
    from django_tiercache.query import query_results

    load = Load(pks, args.threads)
    load.start()
    time.sleep(args.warm)

    def sample(seconds: float) -> list[float]:
        rates = []
        for _ in range(round(seconds / BUCKET)):
            before = load.done
            time.sleep(BUCKET)
            rates.append((load.done - before) / BUCKET)
        return rates

    before = sample(args.before)
    if args.snapshot:
        server.client().save()
    server.kill()
    down = sample(args.down)
    server.start()
    after = sample(args.after)
    load.stop()
    locks = server.client().keys(f"*{query_results.lock_key('')}*")
    return {
        "before": statistics.median(before),
        "down": statistics.median(down),
        "after": after,
        "slow": load.slow,
        "errors": load.errors,
        "locks_left": len(locks),
    }


def recovered_in(run: dict[str, Any]) -> float | None:
    """Seconds after the restart to the first 0.5 s with reads within 10 % of before."""
    for index, rate in enumerate(run["after"]):
        if rate >= 0.9 * run["before"]:
            return index * BUCKET
    return None


def settled(run: dict[str, Any]) -> float:
    """Median reads per second after recovery, relative to before."""
    start = round((recovered_in(run) or 0) / BUCKET)
    return statistics.median(run["after"][start:]) / run["before"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--warm", type=float, default=2.0)
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--down", type=float, default=2.0)
    parser.add_argument("--after", type=float, default=8.0)
    parser.add_argument("--snapshot", action="store_true", help="restart from a SAVE snapshot")
    parser.add_argument("--retry-interval", type=float, default=5.0)
    args = parser.parse_args()

    server = RedisServer()
    server.start()
    try:
        configure(server.url, args.retry_interval)
        pks = seed()
        try:
            runs = [one_run(args, pks, server) for _ in range(args.runs)]
        finally:
            drop_tables()
    finally:
        server.remove()
    report(runs, args)


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"threads={args.threads} retry_interval={args.retry_interval}s snapshot={args.snapshot}")
    print(
        "run  before/s  down/s  "
        + "  ".join(f"+{i * BUCKET:.1f}s" for i in range(len(runs[0]["after"])))
    )
    for number, run in enumerate(runs, 1):
        cells = "  ".join(f"{rate / run['before']:5.2f}" for rate in run["after"])
        print(f"{number:>3}  {run['before']:8.0f}  {run['down']:6.0f}  {cells}")
    median_after = [
        statistics.median(run["after"][i] / run["before"] for run in runs)
        for i in range(len(runs[0]["after"]))
    ]
    print("med  " + " " * 18 + "  ".join(f"{ratio:5.2f}" for ratio in median_after))
    for number, run in enumerate(runs, 1):
        print(
            f"run {number}: within 10% of before {recovered_in(run)} s after the restart, then "
            f"{settled(run):.2f}x before (median); reads over 1 s: "
            f"{run['slow']}; errors: {run['errors']}; locks left: {run['locks_left']}"
        )


if __name__ == "__main__":
    main()
