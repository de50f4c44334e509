"""Outbox load benchmark: many changed objects, real Celery workers, purges counted at an HTTP stub.

One run, from the repository root (PostgreSQL, Redis and RabbitMQ of this machine)::

    .venv/bin/python benchmarks/outbox_load.py [--objects 100000] [--transactions 1000]
        [--workers 2] [--redrive-every 5] [--markdown FILE]

The benchmark creates ``--objects`` rows, then changes every one of them with ``save()`` in
``--transactions`` transactions, while ``--workers`` Celery worker processes (``--pool solo``, one
queue of the benchmark's own on RabbitMQ, deleted at the end) deliver the outbox to a local HTTP
stub that answers like Fastly's bulk purge API. A redrive (``redrive_outbox`` with ``older_than``
equal to ``--redrive-every``) is published every ``--redrive-every`` seconds during the run, as a
beat schedule would, so that redriven and freshly dispatched rows race for the same workers.

It reports the outbox rows written, the time to commit every change and to drain the outbox, the
API calls and keys the stub received, and the object keys lost (changed, never purged) or sent
twice. Environment: ``TIERCACHE_BENCH_OUTBOX_DB`` (database name, created if missing; default
``tiercache_outbox_bench``), ``TIERCACHE_BENCH_REDIS_URL`` (query tier, default
``redis://127.0.0.1:6379/13``), ``TIERCACHE_BENCH_BROKER_URL`` (default the local RabbitMQ).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# -- the stub API (a process of its own, so the benchmark's saves do not slow it down) ------------


def serve_stub(port_queue: Any) -> None:
    """Answer ``POST /service/<id>/purge`` like Fastly; ``GET /stats`` returns what came in."""
    calls = 0
    keys: Counter[str] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            nonlocal calls
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            sent = body.get("surrogate_keys", [])
            with lock:
                calls += 1
                keys.update(sent)
            self._answer({key: f"purge-{calls}" for key in sent})

        def do_GET(self) -> None:
            with lock:
                self._answer({"calls": calls, "keys": dict(keys)})

        def _answer(self, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def stub_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/stats", timeout=30) as response:
        return dict(json.load(response))


def hold_nothing(row_ids: list[int], using: str) -> None:
    """A ``DISPATCHER`` that sends nothing (to time the commits alone)."""


# -- setup ---------------------------------------------------------------------------------------


def ensure_database(name: str) -> None:
    import psycopg
    from psycopg import sql

    host = os.environ.get("TIERCACHE_BENCH_PG_HOST", "127.0.0.1")
    user = os.environ.get("TIERCACHE_BENCH_PG_USER", "postgres")
    with psycopg.connect(host=host, user=user, dbname="postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def seed(objects: int) -> list[int]:
    """Fresh tables with ``objects`` items (bulk, without signals: no purges); their ids."""
    from django.core.management import call_command
    from django.db import connection

    from benchmarks.benchapp.models import Group, Item
    from django_tiercache.models import PurgeRequest

    call_command("migrate", run_syncdb=True, verbosity=0)
    tables = [model._meta.db_table for model in (Item, Group, PurgeRequest)]
    with connection.cursor() as cursor:  # a previous run's rows go without delete signals
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    groups = Group.plain.bulk_create(Group(name=f"g{n}") for n in range(max(1, objects // 100)))
    items = Item.plain.bulk_create(
        (Item(name=f"i{n}", group=groups[n % len(groups)]) for n in range(objects)),
        batch_size=5000,
    )
    return [item.pk for item in items]


def start_workers(count: int, env: dict[str, str]) -> list[subprocess.Popen[str]]:
    workers = []
    for number in range(count):
        command = [
            *(sys.executable, "-m", "celery", "-A", "benchmarks.outbox_celery", "worker"),
            *("--pool", "solo", "-l", "warning", "-n", f"bench{number}-{uuid.uuid4().hex[:6]}@%h"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            *("-Q", env["TIERCACHE_BENCH_QUEUE"]),
        ]
        workers.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return workers


def delete_queue(name: str) -> None:
    from benchmarks.outbox_celery import app

    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(name)


# -- the run -------------------------------------------------------------------------------------


def change_everything(ids: list[int], transactions: int) -> None:
    """Save every item once, in ``transactions`` transactions of equal size."""
    from django.db import transaction

    from benchmarks.benchapp.models import Item

    size = -(-len(ids) // transactions)
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        with transaction.atomic():
            for item in Item.plain.filter(pk__in=chunk):
                item.price += 1
                item.save(update_fields=["price"])


def redrive_periodically(every: float, stop: threading.Event) -> None:
    from django_tiercache.tasks import redrive_outbox

    while not stop.wait(every):
        redrive_outbox.apply_async(kwargs={"older_than": every})


def wait_until_drained(timeout: float) -> bool:
    from django_tiercache.models import PurgeRequest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not PurgeRequest.objects.exclude(status=PurgeRequest.Status.DONE).exists():
            return True
        time.sleep(0.2)
    return False


def run(args: argparse.Namespace) -> dict[str, Any]:
    ports: Any = multiprocessing.Queue()
    stub = multiprocessing.Process(target=serve_stub, args=(ports,), daemon=True)
    stub.start()
    stub_url = f"http://127.0.0.1:{ports.get(timeout=10)}"
    queue = f"tiercache-outbox-bench-{uuid.uuid4().hex[:8]}"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="benchmarks.outbox_settings",
        TIERCACHE_BENCH_STUB_URL=stub_url,
        TIERCACHE_BENCH_QUEUE=queue,
    )
    ensure_database(os.environ.get("TIERCACHE_BENCH_OUTBOX_DB", "tiercache_outbox_bench"))
    import benchmarks.outbox_celery  # noqa: F401  (django.setup() and the Celery app)
    from benchmarks.benchapp.models import Item
    from django_tiercache import register
    from django_tiercache.models import PurgeRequest

    ids = seed(args.objects)
    register(Item)
    workers = start_workers(args.workers, dict(os.environ))
    stop = threading.Event()
    redriver = threading.Thread(target=redrive_periodically, args=(args.redrive_every, stop))
    try:
        started = time.monotonic()
        redriver.start()
        change_everything(ids, args.transactions)
        committed = time.monotonic()
        drained = wait_until_drained(args.timeout)
        finished = time.monotonic()
    finally:
        stop.set()
        redriver.join()
        for worker in workers:
            worker.terminate()
        errors = [worker.communicate(timeout=60)[1] for worker in workers]
        delete_queue(queue)
    stats = stub_stats(stub_url)
    stub.terminate()
    received = Counter(stats["keys"])
    expected = {f"benchapp.item:{pk}" for pk in ids}
    return {
        "objects": len(ids),
        "transactions": args.transactions,
        "workers": args.workers,
        "outbox_rows": PurgeRequest.objects.count(),
        "undelivered_rows": PurgeRequest.objects.exclude(status="done").count(),
        "drained": drained,
        "commit_s": committed - started,
        "drain_s": finished - committed,
        "total_s": finished - started,
        "api_calls": stats["calls"],
        "keys_sent": sum(received.values()),
        "lost": len(expected - set(received)),
        "sent_twice": sum(count - 1 for key, count in received.items() if count > 1),
        "object_keys_sent_twice": sum(
            count - 1 for key, count in received.items() if count > 1 and key in expected
        ),
        "worker_errors": [e.strip()[-500:] for e in errors if "Traceback" in e],
    }


def table(result: dict[str, Any], command: str) -> str:
    rows = [
        ("changed objects (saves)", f"{result['objects']:,}"),
        ("transactions", f"{result['transactions']:,}"),
        ("Celery workers (RabbitMQ, --pool solo)", str(result["workers"])),
        ("outbox rows written", f"{result['outbox_rows']:,}"),
        ("time to commit every change", f"{result['commit_s']:.1f} s"),
        ("outbox drained after the last commit", f"{result['drain_s']:.1f} s"),
        ("total", f"{result['total_s']:.1f} s"),
        ("purge API calls", f"{result['api_calls']:,}"),
        ("keys sent", f"{result['keys_sent']:,}"),
        ("object keys lost (changed, never purged)", str(result["lost"])),
        ("object keys sent twice", str(result["object_keys_sent_twice"])),
        ("rows not done at the end", str(result["undelivered_rows"])),
    ]
    lines = [f"`{command}`", "", "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--transactions", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redrive-every", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--timeout", type=float, default=900.0, help="longest wait to drain")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    result = run(args)
    command = "benchmarks/outbox_load.py " + " ".join(sys.argv[1:])
    text = table(result, command.strip())
    print(text)
    for error in result["worker_errors"]:
        print(f"worker error: {error}", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    ok = result["drained"] and not result["lost"] and not result["object_keys_sent_twice"]
    return 0 if ok else 1


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    sys.exit(main())
