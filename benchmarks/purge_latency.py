"""Commit → fresh latency of the edge tier: Django save() to the first fresh answer from Varnish.

Runs the real integration test (tests/test_edge_integration.py: PostgreSQL test database, a
broker, a Celery worker process with ``--pool=solo``, Varnish 7 + xkey running docs/varnish.vcl)
over N changes and prints p50/p99. Usage, from the repository root::

    .venv/bin/python benchmarks/purge_latency.py [--samples 200] [--broker redis://127.0.0.1:6379/14]

The defaults are 100 samples and RabbitMQ at amqp://guest:guest@127.0.0.1:5672//. PostgreSQL and
Redis come from ``TIERCACHE_TEST_POSTGRES_*`` / ``TIERCACHE_TEST_REDIS_URL`` as for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/test_edge_integration.py::test_save_then_the_next_request_through_varnish_is_fresh"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100, help="changes to time (>= 50)")
    parser.add_argument("--broker", help="Celery broker URL (default: local RabbitMQ)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "latency.json")
        env = {
            **os.environ,
            "TIERCACHE_TEST_DATABASE": "postgres",
            "TIERCACHE_TEST_REDIS_URL": os.environ.get(
                "TIERCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"
            ),
            "TIERCACHE_LATENCY_SAMPLES": str(args.samples),
            "TIERCACHE_LATENCY_REPORT": str(report),
        }
        if args.broker:
            env["TIERCACHE_TEST_BROKER_URL"] = args.broker
        command = [sys.executable, "-m", "pytest", TEST, "-q", "-rs", "-p", "no:cacheprovider"]
        status = subprocess.call(command, cwd=REPO, env=env)
        if status or not report.exists():
            print("benchmark did not run (see the skip reason or failure above)", file=sys.stderr)
            return status or 1
        result = json.loads(report.read_text())
    print(
        f"commit -> fresh over {result['samples']} changes ({result['broker']}): "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
