"""The commit hook's Redis cost with ``WAIT_FOR_REPLICAS`` on and off, against a real primary and
replica (private ``redis-server`` processes, tests/redis_server.py).

Times ``query_results.invalidate()`` of five keys, what a commit pays in the query tier, with
``WAIT_FOR_REPLICAS`` 0 and 1 in alternating rounds in this one process. Usage::

    python benchmarks/redis_wait.py [--iterations 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import primary_with_replica  # noqa: E402

KEYS = [f"shop.product:{n}" for n in range(4)] + ["shop.product"]


def configure(redis_url: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django_tiercache"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": redis_url,
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
            }
        },
        USE_TZ=True,
        TIERCACHE={"KEY_PREFIX": "tc-wait", "PURGE_ASYNC": False, "WAIT_TIMEOUT": 0.1},
    )
    django.setup()


UNCONFIRMED = [0]  # invalidations the replica did not confirm within WAIT_TIMEOUT


def timed(replicas: int, iterations: int) -> list[float]:
    """Microseconds per ``invalidate()`` with ``WAIT_FOR_REPLICAS = replicas``."""
    from django.test.utils import override_settings

    from django_tiercache.query import query_results
    from django_tiercache.query.transport import ReplicationError

    tiercache = {"KEY_PREFIX": "tc-wait", "WAIT_FOR_REPLICAS": replicas, "WAIT_TIMEOUT": 0.1}
    with override_settings(TIERCACHE=tiercache):
        samples = []
        for _ in range(iterations):
            started = time.perf_counter()
            try:
                query_results.invalidate(KEYS)
            except ReplicationError:
                UNCONFIRMED[0] += 1
            samples.append((time.perf_counter() - started) * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with primary_with_replica() as (primary, _replica):
        configure(primary.url)
        timed(0, 200)
        timed(1, 200)  # warm both paths
        results: dict[int, list[float]] = {0: [], 1: []}
        ratios = []
        for _ in range(args.rounds):
            off, on = timed(0, args.iterations), timed(1, args.iterations)
            results[0] += off
            results[1] += on
            ratios.append(statistics.median(on) / statistics.median(off))
    print("WAIT_FOR_REPLICAS  median µs  p90 µs  p99 µs")
    for replicas, samples in results.items():
        cuts = statistics.quantiles(samples, n=100)
        print(
            f"{replicas:>17}  {statistics.median(samples):9.0f}  {cuts[89]:6.0f}  {cuts[98]:6.0f}"
        )
    print("on/off ratio per round (medians):", " ".join(f"{r:.2f}" for r in ratios))
    print(f"not confirmed within WAIT_TIMEOUT (0.1 s): {UNCONFIRMED[0]}")


if __name__ == "__main__":
    main()
