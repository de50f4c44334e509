"""Edge hit ratio under writes: the example shop behind Varnish, Zipf reads, 1 % product saves.

Each key policy runs in a process of its own, against the same seeded data and request sequence:

``library``
    the keys django-tiercache puts on responses and purges (the policy under test);
``table``
    every key replaced by its table key (``shop.product:42`` and ``shop.product?category_id=3``
    both become ``shop.product``): the blunt policy that tags and purges tables;
``ideal``
    each page tagged with its own URL only, and a save purges exactly the pages that show the
    changed product before or after it (its page, its old and new category page, the home page
    when the product is among the top products).

The shop (``example_project``) runs in a thread of the worker process on a SQLite file, its query
tier on fakeredis, behind ``varnishd`` running the shipped ``docs/varnish.vcl`` (the xkey vmod).
Writes go through the ORM; with ``PURGE_ASYNC = False`` the commit invalidates the query tier and
then purges through the real ``VarnishPurger`` before ``save()`` returns. Every read is compared
with the page rendered from the database with the query tier off: a difference is a stale page.

After a warm-up that requests every page once, the measured phase counts Varnish hits
(``X-Cache: HIT``), objects purged per save (Varnish's own answer, ``Purged N objects``) and purge
API calls per save. Usage, from the repository root::

    python benchmarks/edge_hit_ratio.py [--reads 10000] [--products 1000] [--categories 25]
        [--write-ratio 0.01] [--seed 16] [--markdown FILE]

Skips (exit status 0, a message on stderr) when varnishd or the xkey vmod is missing
(``apt-get install varnish varnish-modules``).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("table", "library", "ideal")
#: Share of writes that also move the product to another category.
MOVE_RATIO = 0.25
_PURGED = re.compile(r"Purged (\d+) objects")


# -- what the worker process plugs into the shop ---------------------------------------------------


class Counters:
    """Purge calls and purged objects, reset for each save."""

    api_calls = 0
    purged = 0
    keys = 0


def _mode() -> str:
    return os.environ.get("TIERCACHE_BENCH_MODE", "library")


def _label(key: str) -> str:
    """The table key inside any model-derived key: ``shop.product:42`` -> ``shop.product``."""
    return re.split(r"[:?]", key, maxsplit=1)[0]


def _counting_purger() -> type:
    from django_tiercache.purgers.base import PurgeResult
    from django_tiercache.purgers.varnish import VarnishPurger

    class CountingVarnishPurger(VarnishPurger):
        """The shipped Varnish purger, counting its calls; keys mapped for the compared policies."""

        def send_batch(self, keys: list[str], *, soft: bool) -> PurgeResult:
            mode = _mode()
            if mode == "table":
                keys = sorted({_label(key) for key in keys})
            elif mode == "ideal":  # only the pages the benchmark names (see _ideal_keys)
                keys = [key for key in keys if key.startswith("url:")]
            if not keys:
                return PurgeResult(ok=True)
            Counters.keys += len(keys)
            return super().send_batch(keys, soft=soft)

        def request(self, method: str, url: str, keys: tuple[str, ...], **kwargs: Any) -> Any:
            Counters.api_calls += 1
            return super().request(method, url, keys, **kwargs)

        def success(self, response: Any, keys: tuple[str, ...]) -> PurgeResult:
            found = _PURGED.search(response.text or response.reason or "")
            Counters.purged += int(found.group(1)) if found else 0
            return super().success(response, keys)

    return CountingVarnishPurger


#: Edge TTL of every page in the benchmark: longer than any run, so that only purges make misses
#: (the shop's 300 s product pages would otherwise expire during a slow run, not a fast one).
EDGE_TTL = 86400


class KeyPolicyMiddleware:
    """Outermost: rewrites the key headers TierCacheMiddleware wrote, for ``table``/``ideal``,
    and gives every page the same long edge TTL (:data:`EDGE_TTL`)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        response = self.get_response(request)
        if "Surrogate-Control" in response.headers:
            response.headers["Surrogate-Control"] = f"max-age={EDGE_TTL}"
        mode = _mode()
        keys = response.headers.get("Surrogate-Key")
        if mode == "library" or not keys:
            return response
        if mode == "table":
            new = sorted({_label(key) for key in keys.split()})
        else:
            new = [f"url:{request.path}"]
        response.headers["Surrogate-Key"] = " ".join(new)
        response.headers["Cache-Tag"] = ",".join(new)
        return response


# -- the worker: one policy, one process -----------------------------------------------------------


def _configure(workdir: Path) -> None:
    sys.path[:0] = [str(REPO), str(REPO / "example_project")]
    os.environ["SHOP_DATABASE_URL"] = f"sqlite:///{workdir / 'shop.sqlite3'}"
    os.environ["SHOP_DEBUG"] = "0"
    import django
    from django.conf import settings
    from shop_site import settings as shop

    values = {name: getattr(shop, name) for name in dir(shop) if name.isupper()}
    values["MIDDLEWARE"] = [f"{__name__}.KeyPolicyMiddleware", *shop.MIDDLEWARE]
    values["CACHES"] = {
        **shop.CACHES,
        "fresh": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
    }
    values["LOGGING"] = {"version": 1, "disable_existing_loggers": False}
    settings.configure(**values)
    django.setup()


def _seed(rng: random.Random, products: int, categories: int) -> None:
    from django.core.management import call_command
    from django.db import transaction
    from shop.models import Category, Product, Review, Tag

    call_command("migrate", verbosity=0)
    with transaction.atomic():
        cats = Category.objects.bulk_create(
            Category(name=f"Category {i:02d}", slug=f"category-{i:02d}") for i in range(categories)
        )
        tags = Tag.objects.bulk_create(Tag(name=f"Tag {i}", slug=f"tag-{i}") for i in range(8))
        items = Product.objects.bulk_create(
            Product(
                name=f"Product {i:04d}",
                slug=f"product-{i:04d}",
                category=rng.choice(cats),
                price=Decimal(rng.randint(100, 9999)) / 100,
                featured=rng.random() < 0.02,
            )
            for i in range(products)
        )
        links = Product.tags.through
        links.objects.bulk_create(
            links(product_id=item.pk, tag_id=tag.pk)
            for item in items
            for tag in rng.sample(tags, rng.randint(0, 2))
        )
        Review.objects.bulk_create(
            Review(product=rng.choice(items), author="bench", rating=rng.randint(1, 5), body="ok")
            for _ in range(products // 2)
        )


def _zipf(count: int, exponent: float = 1.0) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, count + 1)))


def _pages_showing(product_id: int) -> set[str]:
    """URLs of the pages that show ``product_id`` now (read from the database, uncached)."""
    from shop import views
    from shop.models import Product

    found = Product.objects.uncached().select_related("category").get(pk=product_id)
    pages = {f"/products/{product_id}/", f"/categories/{found.category.slug}/"}
    if product_id in {p.pk for p in views.top_products().uncached()}:
        pages.add("/")
    return pages


def _ideal_keys(before: set[str], after: set[str]) -> list[str]:
    return [f"url:{page}" for page in sorted(before | after)]


class Fresh:
    """Pages rendered from the database with the query tier off, memoised until the next write."""

    def __init__(self) -> None:
        from django.test import Client

        self.client = Client()
        self.memo: dict[str, str] = {}

    def body(self, path: str) -> str:
        from django.conf import settings
        from django.test import override_settings

        if path not in self.memo:
            with override_settings(TIERCACHE={**settings.TIERCACHE, "CACHE_ALIAS": "fresh"}):
                self.memo[path] = self.client.get(path).content.decode()
        return self.memo[path]


def _serve() -> Iterator[int]:
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), Quiet)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run one policy (``TIERCACHE_BENCH_MODE``) and return its counts."""
    # Stopped from outside: unwind, so that varnishd and the work directory go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="tiercache-edge-bench-") as tmp:
        _configure(Path(tmp))
        from contextlib import contextmanager

        from django.conf import settings
        from django.test import override_settings

        from tests.varnish_support import (
            TOKEN,
            VarnishBinary,
            find_varnishd,
            find_xkey_vmod_dir,
            start_varnish,
        )

        rng = random.Random(args.seed)
        _seed(rng, args.products, args.categories)
        binary = VarnishBinary(find_varnishd() or "", find_xkey_vmod_dir() or "")
        with contextmanager(_serve)() as port, start_varnish(binary, port) as varnish:
            purger_class = _counting_purger()
            setattr(sys.modules[__name__], purger_class.__name__, purger_class)
            purger = f"{__name__}.{purger_class.__name__}"
            tiercache = {
                **settings.TIERCACHE,
                "PURGE_ASYNC": False,
                "PURGERS": {"varnish": {"BACKEND": purger, "URLS": [varnish.url], "TOKEN": TOKEN}},
            }
            with override_settings(TIERCACHE=tiercache):
                return _run(args, rng, varnish)


def _run(args: argparse.Namespace, rng: random.Random, varnish: Any) -> dict[str, Any]:
    from shop.models import Category, Product

    from django_tiercache import invalidate

    categories = [
        f"/categories/{slug}/" for slug in Category.objects.values_list("slug", flat=True)
    ]
    product_ids = list(Product.objects.values_list("pk", flat=True))
    products = [f"/products/{pk}/" for pk in product_ids]
    rng.shuffle(categories)
    rng.shuffle(products)
    pages = ["/", *categories, *products]
    weights = _zipf(len(pages))
    fresh = Fresh()
    for page in pages:  # warm-up: every page once, not counted
        varnish.get(page)
    reads = hits = stale = saves = 0
    per_save = {"api_calls": 0, "purged": 0, "keys": 0}
    while reads < args.reads:
        if rng.random() < args.write_ratio:
            saves += 1
            _write(rng, product_ids, per_save, invalidate)
            fresh.memo.clear()
            continue
        page = pages[bisect.bisect_left(weights, rng.random() * weights[-1])]
        response = varnish.get(page)
        reads += 1
        hits += response.headers.get("X-Cache") == "HIT"
        stale += response.text != fresh.body(page)
    return {
        "mode": os.environ.get("TIERCACHE_BENCH_MODE", "library"),
        "reads": reads,
        "hits": hits,
        "stale": stale,
        "saves": saves,
        **{name: value / max(saves, 1) for name, value in per_save.items()},
        "pages": len(pages),
    }


def _write(
    rng: random.Random, product_ids: list[int], per_save: dict[str, int], invalidate: Any
) -> None:
    """Save one product through the ORM (price, sometimes its category); count its purges."""
    from shop.models import Category, Product

    product = Product.objects.uncached().get(pk=rng.choice(product_ids))
    ideal = _mode() == "ideal"
    before = _pages_showing(product.pk) if ideal else set()
    product.price = Decimal(rng.randint(100, 9999)) / 100
    if rng.random() < MOVE_RATIO:
        product.category = rng.choice(
            list(Category.objects.uncached().exclude(pk=product.category_id))
        )
    Counters.api_calls = Counters.purged = Counters.keys = 0
    product.save()
    if ideal:
        invalidate(*_ideal_keys(before, _pages_showing(product.pk)))
    per_save["api_calls"] += Counters.api_calls
    per_save["purged"] += Counters.purged
    per_save["keys"] += Counters.keys


# -- the parent: every policy, then the table ------------------------------------------------------


def _varnish_missing() -> str | None:
    sys.path.insert(0, str(REPO))
    from tests.varnish_support import find_varnishd, find_xkey_vmod_dir

    if find_varnishd() is None:
        return "varnishd not found (apt-get install varnish varnish-modules)"
    if find_xkey_vmod_dir() is None:
        return "libvmod_xkey.so not found (apt-get install varnish-modules)"
    return None


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ideal = next((r for r in results if r["mode"] == "ideal"), None)
    lines = [
        f"{args.products:,} products in {args.categories} categories ({results[0]['pages']:,} "
        f"pages), {args.reads:,} Zipf reads after a warm-up, {args.write_ratio:.0%} writes "
        f"(product saves, {MOVE_RATIO:.0%} of them moving it to another category), seed "
        f"{args.seed}",
        "",
        "| key policy | edge hit ratio | vs ideal | pages purged per save | keys per save "
        "| API calls per save | saves | stale pages |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        ratio = result["hits"] / result["reads"]
        gap = f"{(ratio - ideal['hits'] / ideal['reads']) * 100:+.2f} points" if ideal else "–"
        lines.append(
            f"| {result['mode']} | {ratio:.2%} | {gap} | {result['purged']:.2f} "
            f"| {result['keys']:.2f} | {result['api_calls']:.2f} | {result['saves']} "
            f"| {result['stale']} |"
        )
    return "\n".join(lines)


def _run_worker(mode: str) -> tuple[int, str, str]:
    """One policy in its own process; stopped with SIGTERM (it cleans up) if we are stopped."""
    command = [sys.executable, "-m", "benchmarks.edge_hit_ratio", "--worker", *sys.argv[1:]]
    env = {**os.environ, "TIERCACHE_BENCH_MODE": mode}
    pipe = subprocess.PIPE
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=pipe, stderr=pipe, text=True) as proc:
        try:
            stdout, stderr = proc.communicate()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    return proc.returncode, stdout, stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--products", type=int, default=1_000)
    parser.add_argument("--categories", type=int, default=25)
    parser.add_argument("--write-ratio", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    missing = _varnish_missing()
    if missing:
        print(f"edge hit ratio benchmark skipped: {missing}", file=sys.stderr)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    for mode in args.modes.split(","):
        status, stdout, stderr = _run_worker(mode)
        if status:
            print(stderr[-3000:], file=sys.stderr)
            return status
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    text = table(results, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    stale = sum(r["stale"] for r in results)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
