"""Save, then read at once through the cache, many times, with reads routed to a lagging replica.

Run by tests/test_replicas.py in a process of its own (settings: tests/settings_replica.py)::

    python -m tests.replica_scenario run --cycles 200 [--reader same|other] [--read router|using]

Each cycle saves one product on the primary (a new name) and at once reads it through the query
tier: ``get(pk=...)`` and the category's list, either through the router or with an explicit
``.using("replica")``; by this process (``same``) or by a second process (``other``, fed over a
pipe). A read that does not return the new name is *stale*. Every entry was cached before its
save, so each read is a miss right after an invalidation: the case a lagging replica gets wrong.
Once the replica has caught up, every product is read again: an entry still stale then was
*stored* stale (``poisoned``). Prints one JSON line with the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings_replica")
    import django

    django.setup()


def _cached(how: str) -> Any:
    from tests.testapp.models import Product

    products = Product.objects.cached()
    return products.using("replica") if how == "using" else products


def read(pk: int, category_id: int, how: str) -> tuple[str, str]:
    """The product's name by ``get()`` and from its category's list, through the query tier."""
    products = _cached(how)
    one = products.get(pk=pk).name
    names = dict(products.filter(category_id=category_id).values_list("pk", "name"))
    return one, names[pk]


def _wait_for_replica(replica: Any, rows: int) -> None:
    """Until the replica has the rows, so the warm-up reads them there.

    The first run migrates: until the replica has replayed that too, its table does not exist.
    """
    from django.db import ProgrammingError

    deadline = time.monotonic() + 30
    while True:
        try:
            if replica.count() >= rows:
                return
        except ProgrammingError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not catch up in 30 s")
        time.sleep(0.05)


def _prepare(rows: int, how: str) -> tuple[list[Any], int]:
    from django.core.management import call_command

    from tests.testapp.models import Category, Product

    call_command("migrate", run_syncdb=True, verbosity=0)
    category = Category.objects.create(name=f"c-{uuid.uuid4().hex[:8]}")
    products = Product.objects.bulk_create(
        Product(name=f"p{i}-v0", category=category) for i in range(rows)
    )
    _wait_for_replica(Product.objects.using("replica").filter(category=category), rows)
    for product in products:
        read(product.pk, category.pk, how)
    return products, category.pk


class _OtherProcess:
    """A second process that answers ``read()`` requests over its stdin/stdout."""

    def __init__(self, how: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.replica_scenario", "serve", f"--read={how}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self, pk: int, category_id: int) -> tuple[str, str]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{pk} {category_id}\n")
        self.process.stdin.flush()
        one, listed = json.loads(self.process.stdout.readline())
        return one, listed

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def run(cycles: int, reader: str, how: str) -> dict[str, Any]:
    from django_tiercache import stats

    products, category_id = _prepare(cycles, how)
    other = _OtherProcess(how) if reader == "other" else None
    stale_get = stale_list = 0
    started = time.monotonic()
    try:
        if other is not None:
            other.read(products[0].pk, category_id)  # started and connected before timing
        for index, product in enumerate(products):
            product.name = expected = f"p{index}-v1"
            product.save()
            if other is None:
                one, listed = read(product.pk, category_id, how)
            else:
                one, listed = other.read(product.pk, category_id)
            stale_get += one != expected
            stale_list += listed != expected
    finally:
        if other is not None:
            other.close()
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # the replica has applied every save now
    poisoned = sum(
        read(product.pk, category_id, how) != (product.name, product.name) for product in products
    )
    # New queries on rows whose changes the replica has applied: misses it serves itself.
    primary_reads = stats.get("query_primary_reads")
    for product in products:
        list(_cached(how).filter(pk=product.pk).values_list("name", flat=True))
    primary_reads = stats.get("query_primary_reads") - primary_reads
    leaked = uncommitted(products[:20], category_id, how)
    return {
        "cycles": cycles,
        "reader": reader,
        "read": how,
        "stale_get": stale_get,
        "stale_list": stale_list,
        "poisoned": poisoned,
        "uncommitted_leaked": leaked,
        "primary_reads_after_catch_up": primary_reads,
        "seconds": round(elapsed, 3),
        "stats": stats.snapshot(),
    }


def edge(cycles: int) -> dict[str, Any]:
    """Save, and check what the replica served when the purge went out (inline, after commit)."""
    from tests.replica_probe import ReplicaProbePurger

    products, _ = _prepare(cycles, "router")
    early = 0
    started = time.monotonic()
    for index, product in enumerate(products):
        product.name = expected = f"p{index}-v1"
        product.save()
        early += ReplicaProbePurger.seen.get(product.pk) != expected
    return {"cycles": cycles, "early_purges": early, "seconds": time.monotonic() - started}


class _Rollback(Exception):
    pass


def uncommitted(products: list[Any], category_id: int, how: str) -> int:
    """Save; save again inside a transaction, read through the cache (a miss), roll back: how
    many reads afterwards return the rolled-back name (an entry stored from uncommitted rows)."""
    from django.db import transaction

    leaked = 0
    for product in products:
        product.name = committed = f"{product.name}-c"
        product.save()  # committed: the next read misses, and the replica is behind
        try:
            with transaction.atomic():
                product.name = "uncommitted"
                product.save()
                read(product.pk, category_id, how)
                raise _Rollback
        except _Rollback:
            product.name = committed
        leaked += read(product.pk, category_id, how) != (committed, committed)
    return leaked


def varnish(cycles: int) -> dict[str, Any]:
    """Save, then at once GET the product page through Varnish (tests/edge_urls.py: an uncached
    read, which the router sends to the replica). Varnish refills from that replica after the
    purge: the page is fresh only if the purge waited for the replica."""
    import requests
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    products, _ = _prepare(cycles, "router")
    server = ThreadedWSGIServer(("127.0.0.1", int(os.environ["TIERCACHE_TEST_ORIGIN_PORT"])), Quiet)
    server.set_app(WSGIHandler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = os.environ["TIERCACHE_TEST_VARNISH_URL"]
    stale = hits = 0
    try:
        for index, product in enumerate(products):
            page = f"{base}product/{product.pk}/"
            requests.get(page, timeout=5)
            hits += requests.get(page, timeout=5).headers.get("X-Cache") == "HIT"
            product.name = expected = f"p{index}-v1"
            product.save()  # the purge goes out inline, after the commit
            stale += requests.get(page, timeout=5).text != expected
    finally:
        server.shutdown()
        server.server_close()
    return {"cycles": cycles, "stale_pages": stale, "cached_before_save": hits}


def serve(how: str) -> None:
    for line in sys.stdin:
        pk, category_id = map(int, line.split())
        print(json.dumps(read(pk, category_id, how)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "serve", "edge", "varnish"])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--reader", choices=["same", "other"], default="same")
    parser.add_argument("--read", choices=["router", "using"], default="router")
    args = parser.parse_args()
    _setup()
    if args.command == "serve":
        serve(args.read)
    elif args.command == "edge":
        print(json.dumps(edge(args.cycles)))
    elif args.command == "varnish":
        print(json.dumps(varnish(args.cycles)))
    else:
        print(json.dumps(run(args.cycles, args.reader, args.read)))


if __name__ == "__main__":
    main()
