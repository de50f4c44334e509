"""Purge batching: API calls per CDN when 1,000 objects change in one transaction.

Runs in-process on SQLite with locmem purgers sized like each CDN's limit (Fastly 256 keys per
call, Cloudflare ``BATCH_SIZE`` 30 and 100); Warehouse would make one call per key. Usage::

    python benchmarks/purge_batching.py [--objects 1000]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LOCMEM = "django_tiercache.purgers.locmem.LocMemPurger"
SIZES = {"Fastly (256 keys per call)": 256, "Cloudflare, BATCH_SIZE 30": 30}
SIZES["Cloudflare, BATCH_SIZE 100"] = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    args = parser.parse_args()

    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django_tiercache", "benchmarks.benchapp"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        TIERCACHE={
            "PURGE_ASYNC": False,
            "PURGERS": {
                name: {"BACKEND": LOCMEM, "MAX_KEYS_PER_REQUEST": size}
                for name, size in SIZES.items()
            },
        },
    )
    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from benchmarks.benchapp.models import Group, Item
    from django_tiercache.edge.purgers import locmem

    call_command("migrate", "django_tiercache", verbosity=0)
    with connection.schema_editor() as editor:
        editor.create_model(Group)
        editor.create_model(Item)
    group = Group.objects.create(name="g")
    items = [Item.objects.create(name=f"i{i}", group=group) for i in range(args.objects)]
    locmem.reset()
    with transaction.atomic():
        for item in items:
            item.price += 1
            item.save()
    keys = locmem.purged_keys(next(iter(SIZES)))
    print(f"{args.objects:,} objects changed in one transaction: {len(keys):,} distinct keys\n")
    print("| purger | API calls | expected ceil(keys / batch) | Warehouse |")
    print("|---|---|---|---|")
    for name, size in SIZES.items():
        calls = sum(1 for call in locmem.calls if call.purger == name)
        print(f"| {name} | {calls} | {math.ceil(len(keys) / size)} | {args.objects:,}+ |")


if __name__ == "__main__":
    main()
