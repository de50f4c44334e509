"""Run every benchmark and write their tables to one Markdown file (docs/benchmarks-latest.md).

``make bench`` runs it from the benchmark's own virtualenv (django-cacheops and django-cachalot
installed from PyPI beside django-tiercache). Needs this machine's PostgreSQL and Redis; the edge
benchmark also needs varnishd and the xkey vmod (it says so and is skipped without them).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=False, cwd=HERE.parent
    )
    if proc.returncode != 0:
        return f"failed:\n\n```\n{proc.stderr.strip()[-2000:]}\n```"
    return proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE.parent / "docs/benchmarks-latest.md")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--skip-outbox", action="store_true", help="leave out the outbox load test (~20 min)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        query_table = Path(tmp) / "query.md"
        run(
            str(HERE / "query_tier.py"),
            f"--iterations={args.iterations}",
            f"--rounds={args.rounds}",
            f"--markdown={query_table}",
        )
        query = query_table.read_text() if query_table.exists() else "failed"
    http = run(str(HERE / "http_overhead.py"))
    batching = run(str(HERE / "purge_batching.py"))
    edge = run(str(HERE / "edge_hit_ratio.py")) or (
        "skipped: varnishd with the xkey vmod not found (apt-get install varnish varnish-modules)"
    )
    outbox = "not run (`--skip-outbox`)" if args.skip_outbox else run(str(HERE / "outbox_load.py"))
    replica = run(str(HERE / "replica_miss.py"))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# Benchmark results

Written by `make bench` ({when}, Python {platform.python_version()}, {platform.machine()}).

## Query tier (`benchmarks/query_tier.py --iterations {args.iterations} --rounds {args.rounds}`)

{query}

## HTTP tier (`benchmarks/http_overhead.py`: 5 processes x 2,000 requests per variant)

```
{http}
```

## Purge batching (`benchmarks/purge_batching.py`)

{batching}

## Edge hit ratio under writes (`benchmarks/edge_hit_ratio.py`: the shop behind Varnish)

{edge}

## Outbox under load (`benchmarks/outbox_load.py`: 2 Celery workers on RabbitMQ, a local stub API)

{outbox}

## Behind a read replica (`benchmarks/replica_miss.py`: own primary + replica 300 ms behind)

{replica}
"""
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
